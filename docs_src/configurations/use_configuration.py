"""Save a cluster configuration once, then start functions from it.

Run with ``python docs_src/configurations/use_configuration.py``.
"""

import taskcloud

taskcloud.create_cluster_configuration(
    "small-workers", worker_cpu=1, worker_memory="512 MiB", n_workers=[0, 2], keepalive="5 s"
)


@taskcloud.function(configuration="small-workers", keepalive="2 s")  # keepalive overridden
def word_count(text: str) -> int:
    return len(text.split())


if __name__ == "__main__":
    print(taskcloud.list_cluster_configurations()["small-workers"])
    print(list(word_count.map(["a b c", "d e", "f"])))
    print(word_count.spec.memory, word_count.spec.keepalive)
