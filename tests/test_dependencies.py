"""The tested dependency set: requirements/constraints.txt (what `scripts/setup_env.sh` installs
with `pip -c`) agrees with setup.py's ranges, and a pinned environment really holds the pins."""
import importlib.metadata as md
import os
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "requirements" / "constraints.txt"


def pins() -> dict:
    out = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and version and " " not in line, f"not a `name==version` pin: {line!r}"
        out[canonicalize_name(name)] = version
    return out


def our_requirements():
    """setup.py's install_requires and the test extra, as the installed metadata states them."""
    reqs = [Requirement(r) for r in md.requires("g2rpo_fast") or []]
    return [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": "test"})]


def test_constraints_pin_every_requirement_inside_its_range():
    pinned = pins()
    assert "torch" not in pinned  # GPU machines keep their CUDA torch; see the file's header
    reqs = our_requirements()
    assert any(canonicalize_name(r.name) == "transformers" for r in reqs)  # the metadata was read
    for req in reqs:
        name = canonicalize_name(req.name)
        if name == "torch":
            continue
        assert name in pinned, f"{req.name} (setup.py: {req}) has no pin in {CONSTRAINTS.name}"
        assert req.specifier.contains(pinned[name], prereleases=True), \
            f"the pin {req.name}=={pinned[name]} is outside setup.py's range {req.specifier}"


def pinned_setup_made_this_environment() -> bool:
    # scripts/setup_env.sh writes its stamp only for a pinned set-up (not for G2RPO_FAST_DEPS=latest).
    return (Path(sys.prefix) / ".g2rpo_fast_setup_stamp").is_file() and os.environ.get("G2RPO_FAST_DEPS") != "latest"


@pytest.mark.skipif(not pinned_setup_made_this_environment(),
                    reason="this environment was not made by the pinned scripts/setup_env.sh")
def test_the_pinned_environment_holds_the_pins():
    wrong = {}
    for name, version in pins().items():
        try:
            installed = md.version(name)
        except md.PackageNotFoundError:
            continue  # a pin for a package this machine does not need (e.g. another platform's)
        if name != "triton" and installed != version:
            wrong[name] = (installed, version)
    assert not wrong, f"installed vs pinned: {wrong}"
