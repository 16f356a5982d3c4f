"""The suite's own grouping for two pytest-xdist workers (tests/conftest.py): no costly fixture built twice."""

from tests.conftest import SHARED_FIXTURES


def _group(item) -> str:
    (marker,) = [m for m in item.iter_markers("xdist_group")]
    return marker.kwargs.get("name", marker.args[0] if marker.args else None)


def test_costly_fixtures_and_modules_each_stay_on_one_worker(request):
    items = request.session.items
    assert all(_group(item) for item in items)
    for name in SHARED_FIXTURES:
        users = [
            i
            for i in items
            if name in i.fixturenames or name in getattr(getattr(i, "module", None), "SHARED_FIXTURES_USED", ())
        ]
        assert len({_group(i) for i in users}) <= 1, name  # none when a subset of the suite runs
    by_module: dict[str, set] = {}
    for item in items:
        by_module.setdefault(item.nodeid.split("::")[0], set()).add(_group(item))
    assert all(len(groups) == 1 for groups in by_module.values())
    # the browser test asks for the sweep at run time; it must share the sweep tests' worker
    browser = [i for i in items if i.nodeid.startswith("tests/test_browser.py")]
    sweep = [i for i in items if "tiny_sweep" in i.fixturenames]
    if browser and sweep:
        assert _group(browser[0]) == _group(sweep[0])
