"""Reading the thresholds YAML file (``DICT_RATELIMIT_THRESHOLDS_FILE``).

Example::

    defaults:
      warning_ratio: 0.20          # remaining <= 20 % -> WARNING (inclusive)
      critical_ratio: 0.10         # remaining <= 10 % -> CRITICAL
      clear_ratio: 0.30            # an alert clears above 30 % (hysteresis)
      warning_horizon_seconds: 900 # first 429 expected within 15 min -> WARNING
      critical_horizon_seconds: 300
    policies:
      ENTRIES_READ_PARTICIPANT_ANTISCAN:
        warning_ratio: 0.40        # refills in 2 min: warn earlier
"""

from __future__ import annotations

from pathlib import Path

import yaml

from dict_ratelimit.domain.catalog import KNOWN_POLICY_NAMES
from dict_ratelimit.domain.thresholds import (
    ThresholdConfig,
    ThresholdConfigError,
    parse_threshold_config,
)

#: A real thresholds file is a few KB; anything this big is a mistake (a wrong path).
MAX_BYTES = 256 * 1024


def load_threshold_file(
    path: Path, extra_policies: frozenset[str] = frozenset()
) -> ThresholdConfig:
    """Parse and validate; every error names the file. Policies allowed by
    ``DICT_RATELIMIT_EXTRA_POLICIES`` may have thresholds of their own."""
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise ThresholdConfigError(f"{path}: {size:,} bytes, at most {MAX_BYTES:,} expected")
        raw = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ThresholdConfigError(f"{path}: thresholds file not found") from None
    except IsADirectoryError:
        raise ThresholdConfigError(f"{path}: is a folder, not a thresholds file") from None
    except UnicodeDecodeError as exc:
        raise ThresholdConfigError(
            f"{path}: not UTF-8 text (byte {exc.start}): is it the right file?"
        ) from None
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ThresholdConfigError(f"{path}: not valid YAML: {first}") from None
    try:
        return parse_threshold_config(raw, KNOWN_POLICY_NAMES | extra_policies)
    except ThresholdConfigError as exc:
        raise ThresholdConfigError(f"{path}: {exc}") from None
