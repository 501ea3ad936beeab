"""Circuits: attribution graphs on the local replacement model of transcoders (Ameisen et al. 2025).

`replacement.py` (transcoders in place of the MLPs, with error nodes; `linear_skip`), `attribute.py`
(`attribution_graph`) and its forward passes (`passes.py`), `graph.py` (`AttributionGraph`, its completeness
check), `prune.py` (influence, pruning), `export.py` (circuit-tracer / Neuronpedia viewer JSON).
"""

from hooked.circuits.attribute import attribution_graph
from hooked.circuits.graph import AttributionGraph
from hooked.circuits.prune import Pruned, influence, prune
from hooked.circuits.replacement import linear_skip, replaced_mlps

__all__ = ["AttributionGraph", "Pruned", "attribution_graph", "influence", "linear_skip", "prune", "replaced_mlps"]
