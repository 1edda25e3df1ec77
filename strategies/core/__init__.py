"""The framework every algorithm runs on, apart from the algorithms themselves.

The algorithm API (``strategy``: the server base and its hooks; ``client``: the client half and
``ClientContext``; ``params``: the typed parameters), the round engine that runs it (``engine``),
the registry (``registry``), the client job and the cohort wire format (``job``, ``wire``,
``cohort``), the checks a reply passes (``validation``, ``update``), cohort reduction
(``reduction``) and the layer view the monitor asks (``layers``). ``strategies.api`` collects
what an algorithm author needs from here.
"""
