"""The plant simulator behind `manage.py simulate`.

- `signals` — what each station type's PLC measures, sample by sample (pure, seeded);
- `faults` — the labelled fault scenarios and their ground truth;
- `plant` — units moving along the lines' routes, recorded in the MES through `mes.services`;
- `publisher` — payload forms and JetStream publishing with async acks;
- `runner` — the simulated clock, pacing against the wall clock, and the rate report.

See docs/simulator.md.
"""

from telemetry.simulator.faults import FaultSettings
from telemetry.simulator.plant import PlantLayout, plant_layout_load
from telemetry.simulator.runner import Simulation, SimulationConfig, Summary, simulate

__all__ = [
    "FaultSettings",
    "PlantLayout",
    "Simulation",
    "SimulationConfig",
    "Summary",
    "plant_layout_load",
    "simulate",
]
