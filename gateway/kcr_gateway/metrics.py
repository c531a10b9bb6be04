"""Prometheus metrics of the gateway (served at ``/metrics``).

Defined once per process on prometheus_client's default registry, next to
the HTTP metrics jupyter_server already records there.
"""

from prometheus_client import Counter, Gauge, Histogram

KERNEL_STARTS = Counter(
    "kcr_kernel_starts_total", "Kernels started (or restarted on a new pod).", ["language"]
)
KERNEL_START_SECONDS = Histogram(
    "kcr_kernel_start_seconds",
    "Time from a start request to a kernel ready for requests.",
    ["language"],
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
EXECUTES = Counter("kcr_executes_total", "execute_request messages completed.", ["language"])
POOL_PODS = Gauge(
    "kcr_pool_pods",
    "Pods per language pool and state (warm, leased, starting).",
    ["language", "state"],
)
KERNELS = Gauge("kcr_kernels", "Kernels known to this gateway.")
CHECKPOINTS = Counter("kcr_checkpoints_total", "Kernel state checkpoints.", ["outcome"])
CHECKPOINT_BYTES = Histogram(
    "kcr_checkpoint_bytes",
    "Size of saved kernel state blobs.",
    buckets=(1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9),
)
