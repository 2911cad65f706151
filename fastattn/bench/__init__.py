"""fastattn.bench in a source checkout: the benchmark's code is the
checkout's top-level bench/ folder. Wheels install that folder here in
place of this file (setup.py maps fastattn.bench to bench/); in a checkout
this file makes bench/ the package, so `python -m fastattn.bench` runs the
same code either way."""

import os as _os

__path__ = [_os.path.join(_os.path.dirname(_os.path.dirname(_os.path.dirname(
    _os.path.abspath(__file__)))), "bench")]
with open(_os.path.join(__path__[0], "__init__.py")) as _source:
    exec(compile(_source.read(), _source.name, "exec"))
