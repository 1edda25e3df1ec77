"""The protocol every algorithm shares, apart from the algorithms themselves.

The base strategy and client half (``base``), the client job and the cohort wire format
(``job``, ``wire``, ``cohort``), the checks a reply passes (``validation``, ``update``), cohort
reduction (``reduction``), the layer view the monitor asks (``layers``), the arithmetic and array
plumbing (``weighted_sum``, ``slices``, ``arrays``), the algorithm registry (``registry``) and the
look-back gradient store and book LBGM keeps on either end (``lbg_store``, ``lbg_book``).
A new algorithm is one module beside ``fedavg.py`` in ``strategies/`` that builds on these.
"""
