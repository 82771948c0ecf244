"""The old name of :mod:`taskcloud.providers.kinds`, kept so that imports of it work."""

from taskcloud.providers.kinds import *  # noqa: F403
