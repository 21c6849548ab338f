"""The research target: data preparation, the baseline trainer an agent edits, and the trusted evaluator.

Nothing here imports `server` or `sandbox`: the sandbox treats these as files it copies and runs.
"""
