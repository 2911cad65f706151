"""placeholder"""
def run(quick, wanted_peers, ctx):
    return []
