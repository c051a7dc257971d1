"""xlgate load generator: N real-time WebSocket streams over P processes, latency, CPU and WER.

Entry point: ``python -m loadtest {run,single,find-max,make-audio} --help``.
"""
