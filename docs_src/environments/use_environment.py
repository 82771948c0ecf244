"""Build a software environment once, then run a function and a cluster inside it.

Run with ``python docs_src/environments/use_environment.py``. The environment holds
``greeting``, a package from a local wheel that this process does not have.
"""

from pathlib import Path

import taskcloud

WHEEL = Path(__file__).parent / "wheels" / "greeting-1.0-py3-none-any.whl"

# Built with uv the first time; the same spec again is a cache hit.
taskcloud.create_software_environment("greeting-env", pip=[str(WHEEL)])


def hello(name: str) -> str:
    import greeting  # only the environment has it

    return greeting.hello(name)


greet = taskcloud.function(hello, software="greeting-env", n_workers=[0, 1], keepalive="2 s")


if __name__ == "__main__":
    print(greet("function"))
    with taskcloud.Cluster(software="greeting-env", n_workers=1) as cluster:
        client = cluster.get_client()
        print(client.submit(hello, "cluster").result())
        client.close()
    print(sorted(taskcloud.list_software_environments()))
    taskcloud.delete_software_environment("greeting-env")
