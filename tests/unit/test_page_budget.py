"""The page service's memory: parsed and rendered pages bounded in bytes."""

from synapse_pypi._pages import PageBudget


def test_budget_evicts_least_recently_used_by_bytes() -> None:
    budget = PageBudget(100)
    assert budget.put("a", "A", 40) and budget.put("b", "B", 40)
    assert budget.get("a") == "A"  # a is now the most recently used
    assert budget.put("c", "C", 40)  # 120 > 100: b goes
    assert (budget.get("a"), budget.get("b"), budget.get("c")) == ("A", None, "C")
    assert budget.used == 80 and len(budget) == 2


def test_budget_keeps_nothing_larger_than_itself() -> None:
    budget = PageBudget(100)
    budget.put("a", "A", 10)
    assert not budget.put("huge", "H", 101)
    assert budget.get("huge") is None and budget.get("a") == "A"  # and evicts nothing for it
    assert budget.used == 10


def test_budget_replaces_and_forgets() -> None:
    budget = PageBudget(100)
    budget.put("a", "A", 60)
    budget.put("a", "A2", 30)
    assert budget.get("a") == "A2" and budget.used == 30
    budget.pop("a")
    budget.pop("missing")
    assert budget.used == 0 and len(budget) == 0
