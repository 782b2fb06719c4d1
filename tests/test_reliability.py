"""The reliability battery (issue 11): bad inputs and faults a demanding user
meets, each reproduced here and answered by a clear error or a correct result.

`docs/reliability.md` lists every probe: what is done, what is expected, and
where it is tested. Sections are per area; each test names its finding.
"""

import numpy as np
import pytest

from deepaa_jax import errors

# ---------------------------------------------------------------------------
# Images at the API edge (apply_policy / apply_all).
# ---------------------------------------------------------------------------

# (section: images)

# ---------------------------------------------------------------------------
# Policy files.
# ---------------------------------------------------------------------------

# (section: policy files)

# ---------------------------------------------------------------------------
# Data files and splits.
# ---------------------------------------------------------------------------

# (section: data)

# ---------------------------------------------------------------------------
# Config files and values.
# ---------------------------------------------------------------------------

# (section: config)

# ---------------------------------------------------------------------------
# Runs: resume identity, checkpoint recovery, reruns, interrupts, errors.
# ---------------------------------------------------------------------------

# (section: runs)
