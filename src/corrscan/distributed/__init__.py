"""Scale out: run a search's chunks as tasks on a Dask cluster and merge the partial results.

Nothing here schedules, retries or moves data by itself: :mod:`dask.distributed` does that.
Partial results are accumulator state dicts (:mod:`corrscan.core.stats`), merged exactly.
"""

from corrscan.distributed.cluster import get_client, map_reduce

__all__ = ["get_client", "map_reduce"]
