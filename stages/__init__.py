"""Plain stage functions (no Prefect): reference/rollout/eval episodes, weights (DuckDB SQL), train."""
import logging

# Stage progress (episodes, losses, tokens/s) is INFO: shown by the CLI and, through
# PREFECT_LOGGING_EXTRA_LOGGERS=stages, in Prefect's run logs.
logging.getLogger(__name__).setLevel(logging.INFO)
