"""avgate: the compliance gateway for online audio/video platforms.

`avgate.kernel` is the shared library every process uses; `avgate.cli` is the
`avgate` command line. `avgate/<service>/v1/` holds code generated from
protos/ by `make proto` (git-ignored, never edited).
"""
