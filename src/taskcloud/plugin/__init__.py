"""The pytask plugin: adapts pytask's execution onto taskcloud's backends.

The library never imports this package. Workers import only
:mod:`taskcloud.call` and :mod:`taskcloud.worker`, which stay free of
pytask so that a worker starts quickly.
"""
