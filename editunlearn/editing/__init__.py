"""Locate-and-edit knowledge editors (ROME, MEMIT, AlphaEdit) used as unlearners.

Written from the papers (Meng et al. 2022, 2023; Fang et al. 2025), not from any code base:

- ``requests``: edit requests from QA items (the chat prompt evaluation asks, the refusal target,
  the key token), query merging and context prefixes.
- ``values``: the target value optimisation (v* for ROME, z for MEMIT/AlphaEdit).
- ``keys``: keys (inputs of an MLP down-projection) of requests.
- ``updates``: the closed-form weight updates (rank-one, least squares, null-space projected).
- ``stats``: the key second-moment statistics, a cached pipeline artifact (``jobs``: its rules'
  job bodies).
- ``editor``: the sequential editing loop shared by the three method modules.

Method modules import the submodules directly (not this package's namespace), so the pipeline's
code-dependency scan sees exactly the files each method uses.
"""
