"""Start a named cluster, attach to it by name, and stop it.

Run with ``python docs_src/clusters/named_cluster.py``.
"""

import taskcloud


def square(x: int) -> int:
    return x * x


if __name__ == "__main__":
    # Starts the cluster "analysis" in its own process, or attaches if it runs already.
    cluster = taskcloud.Cluster(
        name="analysis", n_workers=1, worker_memory="1 GiB", idle_timeout="10 minutes"
    )
    client = cluster.get_client()
    print(sum(client.gather(client.map(square, range(10)))))

    # Any process asking for the same name attaches to the same workers.
    again = taskcloud.Cluster(name="analysis")
    print(again.scheduler_address == cluster.scheduler_address, again.created)
    again.close()  # an attached cluster does not shut down on close

    print(taskcloud.list_clusters()["analysis"]["workers"])
    client.close()
    taskcloud.delete_cluster("analysis")
    print(sorted(taskcloud.list_clusters()))
