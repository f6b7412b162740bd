"""The local staging sandbox: real servers on 127.0.0.1 that the pipelines deploy to.

    python -m sandbox up | down [--purge] | status [--json]

`sandbox.config` holds the fixed ports and paths (import it freely: it starts
nothing); `sandbox.services` brings the servers up and down.
"""
