"""Load generation: ``affinity loadgen`` (open loop with latency from scheduled
send times, closed loop, sweeps, comparisons) and the drivers ``affinity bench``
uses for wrk (closed-loop capacity) and nginx (the reference proxy).

  arrivals, popularity       when requests are due and for which model (pure)
  target, payloads           what the target serves; cheap unique request bodies
  clients/                   one class per wire protocol behind ``InferClient``
  engine, processes          the request loop of one process; several, merged
  histogram, stats, report   HDR latencies, per-process results, report.json
  plots, progress            PNGs; the live line and summaries (rich)
  runner, sweep, compare     one run to files; rate sweeps and the knee; reports side by side
"""
