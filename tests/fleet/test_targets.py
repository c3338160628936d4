"""Target selection: ids, globs, ranges, tags, and the errors users see for typos."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnelnb.errors import TargetError, TunnelnbError, UnknownTargets
from tunnelnb.fleet.targets import MAX_EXPANSION, expand_ranges, select_targets, split_terms


def device(n: int, *, role: str = "core", fw: str = "2.1", status: str = "ONLINE", **tags: str) -> dict:
    return {
        "device_id": f"device-{n:02d}",
        "status": status,
        "tags": {"role": role, **tags},
        "fw_version": fw,
        "sw_version": "1.0.3",
        "product_id": "gw-100",
    }


@pytest.fixture
def inventory() -> list[dict]:
    # device-01..12: odd ones are edge gateways, 01-04 run fw 2.1, the rest 2.2; device-12 is offline
    # and the only one tagged "canary" (a key with an empty value).
    records = [device(n, role="edge" if n % 2 else "core", fw="2.1" if n <= 4 else "2.2") for n in range(1, 13)]
    records[11]["status"] = "OFFLINE"
    records[11]["tags"]["canary"] = ""
    return records


def ids(*numbers: int) -> list[str]:
    return [f"device-{n:02d}" for n in numbers]


# -- ids and globs ----------------------------------------------------------------


def test_exact_id(inventory: list[dict]) -> None:
    assert select_targets("device-03", inventory) == ["device-03"]


def test_results_come_in_inventory_order_each_once(inventory: list[dict]) -> None:
    assert select_targets("device-07, device-02 device-07,device-02", inventory) == ids(2, 7)


def test_spaces_commas_and_tabs_all_separate(inventory: list[dict]) -> None:
    assert select_targets(" device-01 ,\tdevice-05\n,, device-09 ", inventory) == ids(1, 5, 9)


def test_star_glob(inventory: list[dict]) -> None:
    assert select_targets("device-0*", inventory) == ids(*range(1, 10))


def test_question_mark_glob(inventory: list[dict]) -> None:
    assert select_targets("device-?1", inventory) == ids(1, 11)


def test_glob_is_case_sensitive(inventory: list[dict]) -> None:
    with pytest.raises(UnknownTargets):
        select_targets("DEVICE-*", inventory)


def test_character_class_keeps_glob_meaning(inventory: list[dict]) -> None:
    inv = [{"device_id": name} for name in ("gw-a", "gw-b", "gw-c", "gw-12")]
    assert select_targets("gw-[ab]", inv) == ["gw-a", "gw-b"]
    # [12] is "1 or 2" to a shell, not the number twelve.
    with pytest.raises(UnknownTargets):
        select_targets("gw-[12]", inv)


def test_star_and_all_select_everything(inventory: list[dict]) -> None:
    everything = [record["device_id"] for record in inventory]
    assert select_targets("*", inventory) == everything
    assert select_targets("all", inventory) == everything
    assert select_targets(["all"], inventory) == everything


def test_id_with_glob_characters_matches_itself() -> None:
    inv = [{"device_id": "odd[1]"}, {"device_id": "odd1"}]
    assert select_targets("odd[1]", inv) == ["odd[1]"]


# -- ranges -----------------------------------------------------------------------


def test_bracket_range(inventory: list[dict]) -> None:
    assert select_targets("device-0[1-4]", inventory) == ids(1, 2, 3, 4)


def test_zero_padded_range_over_three_digit_ids() -> None:
    inv = [{"device_id": f"device-{n:03d}"} for n in range(1, 131)]
    got = select_targets("device-[001-120]", inv)
    assert got == [f"device-{n:03d}" for n in range(1, 121)]
    assert got[0] == "device-001" and got[-1] == "device-120"


def test_range_matching_only_some_ids_is_fine(inventory: list[dict]) -> None:
    assert select_targets("device-[10-20]", inventory) == ids(10, 11, 12)


def test_unpadded_range_does_not_pad() -> None:
    inv = [{"device_id": name} for name in ("n1", "n2", "n09", "n10", "n11")]
    assert select_targets("n[1-11]", inv) == ["n1", "n2", "n10", "n11"]


def test_range_lists_and_several_brackets() -> None:
    assert expand_ranges("dev-[01-03,07]") == ["dev-01", "dev-02", "dev-03", "dev-07"]
    assert expand_ranges("r[1-2]-d[08-09]") == ["r1-d08", "r1-d09", "r2-d08", "r2-d09"]
    assert expand_ranges("plain") == ["plain"]
    assert expand_ranges("g[ab]-[1-2]") == ["g[ab]-1", "g[ab]-2"]


def test_comma_inside_brackets_does_not_split_terms(inventory: list[dict]) -> None:
    assert split_terms("device-0[1,3], device-10") == ["device-0[1,3]", "device-10"]
    assert select_targets("device-0[1,3], device-10", inventory) == ids(1, 3, 10)


def test_range_combined_with_glob() -> None:
    inv = [{"device_id": name} for name in ("rack1-a", "rack1-b", "rack2-a", "rack3-a")]
    assert select_targets("rack[1-2]-*", inv) == ["rack1-a", "rack1-b", "rack2-a"]


def test_backwards_range_is_an_error(inventory: list[dict]) -> None:
    with pytest.raises(TargetError, match=r"runs backwards: write \[1-5\]"):
        select_targets("device-[5-1]", inventory)


def test_huge_expansion_is_refused(inventory: list[dict]) -> None:
    with pytest.raises(TargetError, match="more than"):
        select_targets(f"device-[0-{MAX_EXPANSION}]", inventory)
    with pytest.raises(TargetError, match="more than"):
        expand_ranges("a[0-999]b[0-999]")


def test_unclosed_bracket(inventory: list[dict]) -> None:
    with pytest.raises(TargetError, match=r"unclosed '\['"):
        select_targets("device-[1-3 device-04", inventory)


@settings(max_examples=200, deadline=None)
@given(
    lo=st.integers(0, 400),
    span=st.integers(0, 40),
    pad=st.booleans(),
    prefix=st.text(alphabet="abz-_.", max_size=4),
    suffix=st.text(alphabet="abz-_.", max_size=4),
)
def test_range_expansion_property(lo: int, span: int, pad: bool, prefix: str, suffix: str) -> None:
    hi = lo + span
    width = len(str(hi)) + 1 if pad else 0  # pad=True writes both bounds with a leading zero
    term = f"{prefix}[{str(lo).zfill(width)}-{str(hi).zfill(width)}]{suffix}"
    expanded = expand_ranges(term)
    assert expanded == [f"{prefix}{str(n).zfill(width)}{suffix}" for n in range(lo, hi + 1)]
    assert len(set(expanded)) == span + 1


@settings(max_examples=100, deadline=None)
@given(
    size=st.integers(1, 150),
    bounds=st.tuples(st.integers(1, 200), st.integers(0, 60)),
    width=st.integers(1, 4),
    shuffle=st.randoms(use_true_random=False),
)
def test_range_selects_exactly_the_ids_in_range(size: int, bounds: tuple[int, int], width: int, shuffle) -> None:
    lo, span = bounds
    hi = lo + span
    width = max(width, len(str(hi)))
    inv = [{"device_id": f"node-{n:0{width}d}"} for n in range(1, size + 1)]
    shuffle.shuffle(inv)
    expected = [r["device_id"] for r in inv if lo <= int(r["device_id"][5:]) <= hi]
    term = f"node-[{lo:0{width}d}-{hi:0{width}d}]"
    if expected:
        assert select_targets(term, inv) == expected  # inventory order, even when shuffled
    else:
        with pytest.raises(UnknownTargets):
            select_targets(term, inv)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.from_regex(r"[a-z][a-z0-9_-]{0,10}", fullmatch=True), min_size=1, max_size=8), st.data())
def test_split_terms_round_trips_any_separators(terms: list[str], data: st.DataObject) -> None:
    separators = [data.draw(st.sampled_from([" ", ",", ", ", "\t", " ,\n"])) for _ in terms]
    spec = "".join(sep + term for sep, term in zip(separators, terms, strict=True))
    assert split_terms(spec) == terms


# -- tags and fields --------------------------------------------------------------


def test_tag_value(inventory: list[dict]) -> None:
    assert select_targets("@edge", inventory) == ids(1, 3, 5, 7, 9, 11)


def test_tag_key_present(inventory: list[dict]) -> None:
    assert select_targets("@canary", inventory) == ids(12)
    assert select_targets("@role", inventory) == ids(*range(1, 13))


def test_tag_key_value(inventory: list[dict]) -> None:
    assert select_targets("@role=core", inventory) == ids(2, 4, 6, 8, 10, 12)


def test_fw_and_sw_match_version_fields(inventory: list[dict]) -> None:
    assert select_targets("@fw=2.1", inventory) == ids(1, 2, 3, 4)
    assert select_targets("@fw_version=2.2", inventory) == ids(*range(5, 13))
    assert select_targets("@sw=1.0.3", inventory) == ids(*range(1, 13))


def test_fw_matches_the_tag_or_the_field() -> None:
    # A device may carry an explicit fw tag as well as its fw_version: either may match.
    inv = [
        {"device_id": "a", "tags": {"fw": "3.0"}, "fw_version": "2.1"},
        {"device_id": "b", "tags": {}, "fw_version": "3.0"},
        {"device_id": "c", "tags": {}, "fw_version": "2.1"},
    ]
    assert select_targets("@fw=3.0", inv) == ["a", "b"]
    assert select_targets("@fw=2.1", inv) == ["a", "c"]


def test_tag_value_glob(inventory: list[dict]) -> None:
    assert select_targets("@fw=2.*", inventory) == ids(*range(1, 13))


def test_other_fields_match_too(inventory: list[dict]) -> None:
    assert select_targets("@status=OFFLINE", inventory) == ids(12)


def test_tag_and_range_combined(inventory: list[dict]) -> None:
    assert select_targets("device-0[1-4] @edge", inventory) == ids(1, 2, 3, 4, 5, 7, 9, 11)


def test_iotda_tag_list_form() -> None:
    inv = [
        {"device_id": "gw-1", "tags": [{"tag_key": "site", "tag_value": "shenzhen"}]},
        {"device_id": "gw-2", "tags": [{"tag_key": "site", "tag_value": "xian"}, {"tag_key": "edge"}]},
        {"device_id": "gw-3", "tags": None},
    ]
    assert select_targets("@site=xian", inv) == ["gw-2"]
    assert select_targets("@edge", inv) == ["gw-2"]
    assert select_targets("@shenzhen", inv) == ["gw-1"]


def test_bare_at_is_an_error(inventory: list[dict]) -> None:
    with pytest.raises(TargetError, match="names no tag"):
        select_targets("@", inventory)


# -- list specs and inventories ---------------------------------------------------


def test_python_list_spec(inventory: list[dict]) -> None:
    assert select_targets(["device-09", "device-0[1-2]", "@canary"], inventory) == ids(1, 2, 9, 12)
    assert select_targets(("device-03",), inventory) == ids(3)
    assert select_targets(["device-01", "device-0[5-6] @canary"], inventory) == ids(1, 5, 6, 12)
    assert select_targets((n for n in ["device-04"]), inventory) == ids(4)


def test_dataframe_inventory(inventory: list[dict]) -> None:
    frame = pd.DataFrame(inventory)
    assert select_targets("@edge device-02", frame) == ids(1, 2, 3, 5, 7, 9, 11)


# -- errors -----------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["", "   ", " , ,", [], ["", "  "], None])
def test_empty_spec_is_a_clear_error(spec, inventory: list[dict]) -> None:
    with pytest.raises(TargetError, match="no targets given") as info:
        select_targets(spec, inventory)
    assert "\n" not in str(info.value)


def test_typo_suggests_the_close_id(inventory: list[dict]) -> None:
    with pytest.raises(UnknownTargets) as info:
        select_targets("devcie-01", inventory)
    assert str(info.value) == "no device matches 'devcie-01' (did you mean device-01?)"
    assert info.value.terms == ["devcie-01"]
    assert info.value.suggestions == {"devcie-01": ["device-01"]}
    assert isinstance(info.value, TunnelnbError)


def test_every_unmatched_term_is_named(inventory: list[dict]) -> None:
    with pytest.raises(UnknownTargets) as info:
        select_targets("device-01 devcie-02 @edg zzz-9 device-03", inventory)
    message = str(info.value)
    assert info.value.terms == ["devcie-02", "@edg", "zzz-9"]
    assert message.startswith("no device matches 'devcie-02' (did you mean device-02?)")
    assert "'@edg' (did you mean @edge?)" in message
    assert message.endswith(", 'zzz-9'")
    assert "\n" not in message


def test_tag_value_typo_suggests_known_values(inventory: list[dict]) -> None:
    with pytest.raises(UnknownTargets, match=r"'@fw=2\.3' \(did you mean @fw=2\.1 or @fw=2\.2\?\)"):
        select_targets("@fw=2.3", inventory)


def test_empty_inventory() -> None:
    with pytest.raises(UnknownTargets, match=r"no device matches '\*' \(the inventory is empty\)"):
        select_targets("*", [])


# -- intersection and exclusion (Ansible's & and !) -------------------------------


def test_and_keeps_only_devices_that_also_match(inventory: list[dict]) -> None:
    assert select_targets("device-0[1-4] &@edge", inventory) == ids(1, 3)
    assert select_targets("@edge &@fw=2.1", inventory) == ids(1, 3)


def test_not_removes_devices(inventory: list[dict]) -> None:
    assert select_targets("@edge !device-03", inventory) == ids(1, 5, 7, 9, 11)
    assert select_targets("@edge &@fw=2.2 !device-0[5-7]", inventory) == ids(9, 11)


def test_only_exclusions_apply_to_every_device(inventory: list[dict]) -> None:
    assert select_targets("!@edge !device-12", inventory) == ids(2, 4, 6, 8, 10)
    assert select_targets("&@status=OFFLINE", inventory) == ids(12)


def test_an_intersection_may_leave_nothing(inventory: list[dict]) -> None:
    assert select_targets("device-02 &@edge", inventory) == []


def test_and_and_not_terms_must_match_a_device(inventory: list[dict]) -> None:
    with pytest.raises(UnknownTargets) as info:
        select_targets("@edge !devcie-03 &@fw=9", inventory)
    assert info.value.terms == ["!devcie-03", "&@fw=9"]
    assert info.value.suggestions["!devcie-03"] == ["!device-03"]
    with pytest.raises(TargetError, match="needs a pattern"):
        select_targets("@edge !", inventory)
