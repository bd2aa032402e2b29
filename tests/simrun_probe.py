"""Run by tests/test_simrun.py through `gpuwatch sim-run SCENARIO -- tests/simrun_probe.py`: what
nvitop's API reads from every GPU, as JSON (clocks included, which `nvitop --once` does not show)."""

import json

from nvitop import Device

print(
    json.dumps(
        [
            {
                "temperature": device.temperature(),
                "power_mw": device.power_usage(),
                "memory_used": device.memory_used(),
                "clocks_mhz": device.clock_infos()._asdict(),
                "performance_state": device.performance_state(),
            }
            for device in Device.all()
        ]
    )
)
