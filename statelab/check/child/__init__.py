"""Files that run in the check's child processes, not in statelab's: the Locust file and nothing else.

A directory of its own because Locust puts its locustfile's directory first on `sys.path`: here,
no module of statelab can shadow one the user's journey imports.
"""
