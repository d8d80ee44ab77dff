"""Custom image recipes and build failures, without building anything (fast tier)."""

from __future__ import annotations

import pytest

from common.errors import InvalidInput
from sandbox.custom_images import ANSI, BuildFailed, CustomRecipe, apt_failure, pip_failure


def test_a_recipe_hashes_alike_whatever_the_order_and_case() -> None:
    one = CustomRecipe.of("sandbox", ["jq", "python3-yaml", "jq"], ["Tabulate", "six==1.17.0"])
    two = CustomRecipe.of("sandbox", ["python3-yaml", "jq"], ["six==1.17.0", "tabulate"])
    assert one == two and one.tag == two.tag and one.base_tag == two.base_tag
    assert one.tag.startswith("cloudskills/custom:") and one.base_tag.startswith("cloudskills/custom-base:")
    assert CustomRecipe.of("python-data", ["jq"], []).base_tag != CustomRecipe.of("sandbox", ["jq"], []).base_tag


@pytest.mark.parametrize(
    ("debian", "pypi"),
    [(["jq; rm -rf /"], []), (["JQ"], []), ([], ["tabulate --index-url http://evil"]), ([], ["-e ."])],
)
def test_names_that_are_not_packages_are_refused(debian: list[str], pypi: list[str]) -> None:
    with pytest.raises(InvalidInput):
        CustomRecipe.of("sandbox", debian, pypi)


def test_an_apt_failure_names_the_package() -> None:
    output = "Reading package lists...\nE: Unable to locate package no-such-zz\n"
    assert ANSI.sub("", "\x1b[1;31mE: \x1b[0mUnable to locate package no-such-zz\x1b[0m") == (
        "E: Unable to locate package no-such-zz"
    )
    error = apt_failure(output, ("jq", "no-such-zz"))
    assert isinstance(error, BuildFailed) and "no package named 'no-such-zz'" in error.message
    unmet = apt_failure(
        " foo : Depends: libbar (>= 2) but it is not installable\nE: Unable to correct problems", ("foo",)
    )
    assert "'foo' has unmet dependencies" in unmet.message


def test_a_pip_failure_names_the_requirement() -> None:
    output = (
        "ERROR: Could not find a version that satisfies the requirement nope==9 (from versions: none)\n"
        "ERROR: No matching distribution found for nope==9\n"
    )
    error = pip_failure(output, ("nope==9",))
    assert isinstance(error, BuildFailed) and "'nope==9'" in error.message and "pypi_packages" in error.message
