"""The scheduler adapter: everything kit asks of Slurm goes through this package.

``commands`` runs Slurm's tools (submit, cancel, the state of many jobs in one call), ``parse`` reads what they print,
``cluster`` describes partitions and nodes. Nothing else in kit calls a Slurm command.
"""

from kit.slurm.cluster import Cluster, Node, Partition, parse_nodes, parse_partitions, query_cluster
from kit.slurm.commands import (
    FINISHED,
    RUNS_AGAIN,
    JobState,
    SubmitInterrupted,
    SubmitUncertain,
    accounting_states,
    cancel,
    job_exists,
    job_state,
    parse_queue,
    queue_states,
    queued_jobs,
    require,
    run,
    submit,
)
from kit.slurm.parse import expand_hostlist, format_minutes, parse_gres, parse_kv_line, parse_time_limit

__all__ = [
    "FINISHED", "RUNS_AGAIN", "Cluster", "JobState", "Node", "Partition", "SubmitInterrupted", "SubmitUncertain",
    "accounting_states", "cancel", "expand_hostlist", "format_minutes", "job_exists", "job_state", "parse_gres",
    "parse_kv_line", "parse_nodes", "parse_partitions", "parse_queue", "parse_time_limit", "query_cluster",
    "queue_states", "queued_jobs", "require", "run", "submit",
]
