"""Task families: what the methods of one kind of problem share.

A family holds its evaluation protocol, its detectors' contract and registry, its
post-processing and its run artifacts; a method package composes the platform's layers and
its family. Only methods and jobs import from here (and the test helpers); a family's
deployable scorer lives in the family, on :mod:`raylab.deploy`.
"""
