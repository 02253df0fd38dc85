"""Transitions of the text environment against upstream's table (UPSTREAM.md 1.4, 1.5, 1.8).

Every transition test runs on the generated shop and, when ../shared/webshop is there, on the real 1,000-product
catalogue. A page's identity is checked through what an agent sees: the observation and the clickables.
"""
from __future__ import annotations

import math

import pytest

from webshop.catalogue import Catalogue, Product
from webshop.env import DEFAULT_MAX_STEPS, BatchEnv, Episode, Shop, parse_action
from webshop.generate import generate_catalogue
from webshop.policies import oracle_policy, rule_policy, run_policy


@pytest.fixture(params=["generated", "real"])
def shop(request) -> Shop:
    return request.getfixturevalue(f"{request.param}_shop")


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------
def clickables(ep: Episode) -> list[str]:
    return ep.available_actions()["clickables"]


def ok(ep: Episode, action: str):
    """Step a valid action and return the observation."""
    result = ep.step(action)
    assert result.info["valid"], action
    return result.observation


def search(ep: Episode, query: str | None = None) -> str:
    return ok(ep, f"search[{query if query is not None else ep.goal.instruction_without_price}]")


def item_with_options(shop: Shop, mode: str = "text", groups: int = 2, pages: int = 1) -> tuple[Episode, Product]:
    """An episode on the item page of the first product (over goals in order) with `groups` option groups,
    found among the first `pages` result pages of the goal's own query."""
    for goal_idx in range(len(shop.goals)):
        ep = Episode(shop, goal_idx, mode, max_steps=1000)
        search(ep)
        for page in range(1, pages + 1):
            for p in ep.state.results[(page - 1) * 10: page * 10]:
                if len(p.options) >= groups and all(len(v) >= 2 for v in p.options.values()):
                    ok(ep, f"click[{p.asin.lower()}]")
                    return ep, p
            if page < pages:
                ok(ep, "click[next >]")
    raise AssertionError(f"no product with {groups} option groups on the first {pages} result pages")


def open_product(shop: Shop, product: Product) -> Episode:
    """An episode on `product`'s item page, reached by searching its title."""
    ep = Episode(shop, 0, max_steps=1000)
    search(ep, product.title.replace("[", " ").replace("]", " "))
    while product.asin.lower() not in clickables(ep):
        assert ep.state.page * 10 < len(ep.state.results), f"{product.asin} not found by its title"
        ok(ep, "click[next >]")
    ok(ep, f"click[{product.asin.lower()}]")
    return ep


# ---------------------------------------------------------------------------------------------------------
# action parsing (upstream `parse_action`)
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("action, parsed", [
    ("search[red shoes]", ("search", "red shoes")),
    ("click[< prev]", ("click", "< prev")),
    ("search[a [b] c]", ("search[a ", "b] c")),  # greedy: the name swallows the first bracket
    ("search[shoes] please", ("search", "shoes")),  # anchored at the start only
    ("search[]", ("search[]", None)),
    ("click[", ("click[", None)),
    ("", ("", None)),
    ("search[foo\nbar]", ("search[foo\nbar]", None)),  # '.' does not match a newline
])
def test_parse_action(action, parsed):
    assert parse_action(action) == parsed


# ---------------------------------------------------------------------------------------------------------
# transitions
# ---------------------------------------------------------------------------------------------------------
def test_search_runs_from_every_page(shop):
    ep, product = item_with_options(shop)
    value = product.options[next(iter(product.options))][1]
    ok(ep, f"click[{value}]")
    assert ep.state.options
    query = Episode(shop, 1).goal.instruction_without_price
    expected = search(Episode(shop, ep.goal_idx), query)

    assert search(ep, query) == expected  # from an item page with an option selected
    assert (ep.state.kind, ep.state.page, ep.state.asin, ep.state.options) == ("results", 1, None, {})
    ok(ep, "click[next >]")
    assert search(ep, query) == expected  # from results page 2
    ok(ep, f"click[{ep.state.results[0].asin.lower()}]")
    ok(ep, "click[features]")
    assert ep.state.kind == "sub"
    assert search(ep, query) == expected  # from a sub-page
    ok(ep, "click[back to search]")
    assert search(ep, query.upper()) == expected  # from the start page; the argument is lower-cased
    assert ep.state.keywords == query.lower().split(" ")


def test_next_is_always_there_even_past_the_last_page(shop):
    ep = Episode(shop, 0, max_steps=100)
    search(ep)
    total = len(ep.state.results)
    last = math.ceil(total / 10)
    for page in range(2, last + 3):
        obs = ok(ep, "click[next >]")
        assert ep.state.page == page
        assert f"Page {page} (Total results: {total}) [SEP] < Prev [SEP] Next >" in obs
    assert obs.endswith("< Prev [SEP] Next >")  # past the last page: no products
    assert clickables(ep) == ["back to search", "< prev", "next >"]


def test_search_without_hits(shop):
    ep = Episode(shop, 0)
    obs = search(ep, "qqqzzzxxq")
    assert obs.endswith("[SEP] Back to Search [SEP] Page 1 (Total results: 0) [SEP] Next >")
    assert clickables(ep) == ["back to search", "next >"]


def test_search_with_a_word_that_stems_to_nothing(shop):
    """Porter stems a lone "s" to ""; found by a sampled reply in `make run` ("... s ..."), which crashed bm25s."""
    assert shop.search_engine.tokenize("s")[0] == ""
    assert shop.search("s") == []
    words = shop.goal(0).instruction_text.split()[:3]
    assert shop.search(" ".join(words + ["s"])) == shop.search(" ".join(words))
    ep = Episode(shop, 0)
    assert ep.step("search[men s shoes]").info["valid"]


def test_prev_on_results_goes_back_one_page(shop):
    ep = Episode(shop, 0)
    search(ep)
    page_two = ok(ep, "click[next >]")
    ok(ep, "click[next >]")
    assert ok(ep, "click[< prev]") == page_two
    assert ep.state.page == 2
    first = ok(ep, "click[< prev]")
    assert ep.state.page == 1 and "< Prev" not in first
    assert ep.step("click[< prev]").info["valid"] is False  # page 1 has no "< Prev"


def test_prev_on_a_sub_page_returns_to_the_item_page_keeping_options(shop):
    ep, product = item_with_options(shop, "text_rich")
    values = [vals[-1] for vals in product.options.values()]
    for v in values:
        ok(ep, f"click[{v}]")
    item_page = ep.observation()
    for sub in ("description", "features", "reviews"):
        ok(ep, f"click[{sub}]")
        assert clickables(ep) == ["back to search", "< prev"]
        assert ok(ep, "click[< prev]") == item_page
        assert ep.state.options == dict(zip(product.options, values))


def test_prev_on_the_item_page_returns_to_the_results_page_with_options_reset(shop):
    ep, product = item_with_options(shop, "text", pages=2)
    page = ep.state.page
    results_page = Episode(shop, ep.goal_idx)
    search(results_page, " ".join(ep.state.keywords))
    for _ in range(page - 1):
        ok(results_page, "click[next >]")
    ok(ep, f"click[{product.options[next(iter(product.options))][0]}]")
    assert ok(ep, "click[< prev]") == results_page.observation()
    assert (ep.state.kind, ep.state.page, ep.state.asin, ep.state.options) == ("results", page, None, {})
    ok(ep, f"click[{product.asin.lower()}]")  # back on the item page nothing is selected any more
    assert ep.state.options == {}


def test_back_to_search_starts_a_new_session(shop):
    ep, product = item_with_options(shop, "text_rich")
    start = Episode(shop, ep.goal_idx, "text_rich").observation()
    ok(ep, f"click[{product.options[next(iter(product.options))][0]}]")
    ok(ep, "click[< prev]")
    assert f"\n[clicked button] {product.asin} " in ep.observation()
    assert ok(ep, "click[back to search]") == start
    assert ep.available_actions() == {"has_search_bar": True, "clickables": ["search"]}
    assert (ep.state.keywords, ep.state.page, ep.state.asin, ep.state.options, ep.state.visited) == \
        (None, None, None, {}, set())
    assert "[clicked button]" not in search(ep)


def test_visited_products_stay_marked_within_a_session(shop):
    ep = Episode(shop, 0, "text_rich")
    search(ep)
    asins = [p.asin for p in ep.state.results[:3]]
    for asin in asins[:2]:
        ok(ep, f"click[{asin.lower()}]")
        ok(ep, "click[< prev]")
    obs = search(ep)  # a new search keeps the session's visited ASINs
    for asin in asins[:2]:
        assert f"\n[clicked button] {asin} " in obs
    assert f"\n[button] {asins[2]} [button_]" in obs


def test_option_clicks_are_keyed_by_value(shop):
    ep, product = item_with_options(shop, "text_rich")
    (g1, v1), (g2, v2) = [(name, values) for name, values in product.options.items()][:2]
    obs = ok(ep, f"click[{v1[0]}]")
    assert ep.state.options == {g1: v1[0]} and ep.state.kind == "item"
    ok(ep, f"click[{v2[1]}]")
    ok(ep, f"click[{v1[1]}]")  # a second value of the same group replaces the first
    assert ep.state.options == {g1: v1[1], g2: v2[1]}
    assert ep.state.asin == product.asin
    if '"' not in v1[0]:  # text_rich finds a selection by '"value"' in the JSON-encoded URL
        assert obs.startswith(f"You have clicked {v1[0]}.\n")


def test_an_option_value_shared_by_two_groups_selects_the_last_group():
    """Upstream's text_to_clickable is keyed by value: the last group holding a value wins, at the first
    group's position in the clickables."""
    product = Product(
        asin="B000000001", title="Sport Sock", description="A sock.", bullet_points=["soft"], pricing=[10.0],
        price_text="$10.0", options={"color": ["red", "8"], "size": ["8", "9"]}, attributes=["soft"],
        category="fashion", query="socks", product_category="Clothing", instruction_text="Find me soft socks",
        instruction_attributes=["soft"])
    shop = Shop(Catalogue.from_products("tiny", [product]))
    ep = Episode(shop, 0)
    search(ep, "sock")
    ok(ep, "click[b000000001]")
    assert clickables(ep)[-3:] == ["red", "8", "9"]
    ok(ep, "click[8]")
    assert ep.state.options == {"size": "8"}


def test_real_products_with_a_shared_option_value(real_shop):
    shared = [p for p in real_shop.catalogue.products
              if len({v for vs in p.options.values() for v in vs}) < sum(map(len, p.options.values()))]
    assert len(shared) == 2
    for product in shared:
        ep = open_product(real_shop, product)
        groups = list(product.options)
        for name in groups:
            for value in product.options[name]:
                owner = [g for g in groups if value in product.options[g]][-1]
                ok(ep, f"click[{value}]")
                assert ep.state.options[owner] == value


def test_sub_pages(shop):
    ep, product = item_with_options(shop, groups=1)
    assert ep.step("click[attributes]").info["valid"] is False  # only with show_attrs
    description = ok(ep, "click[description]")
    assert ep.state.sub_page == "Description"
    if product.description.strip():
        assert description.endswith(f"< Prev [SEP] {product.description.strip()}")
    ok(ep, "click[< prev]")
    head = f"Instruction: [SEP] {ep.goal.instruction_text} [SEP] Back to Search [SEP] < Prev"
    # a bullet that is only whitespace with a newline leaves no text node (BeautifulSoup's rule)
    bullets = [b.strip() for b in product.bullet_points if not (b.isspace() and "\n" in b)]
    assert ok(ep, "click[features]") == " [SEP] ".join([head] + bullets)
    ok(ep, "click[< prev]")
    assert ok(ep, "click[reviews]").endswith("< Prev [SEP] No reviews found")


def test_attributes_sub_page_with_show_attrs(generated_shop):
    shop = Shop(generated_shop.catalogue, generated_shop.goals, show_attrs=True)
    ep, product = item_with_options(shop, groups=1)
    assert clickables(ep)[:7] == ["back to search", "< prev", "description", "features", "reviews", "attributes",
                                 "buy now"]
    ok(ep, "click[attributes]")
    assert ep.state.sub_page == "Attributes"
    assert clickables(ep) == ["back to search", "< prev"]


def test_buy_ends_the_episode_with_a_reward(shop):
    ep, product = item_with_options(shop)
    for values in product.options.values():
        ok(ep, f"click[{values[0]}]")
    result = ep.step("click[buy now]")
    assert result.done and result.info["valid"]
    assert 0.0 <= result.reward <= 1.0
    assert result.info["end_reason"] == "bought" and ep.end_reason == "bought"
    assert isinstance(result.info["reward_info"], dict)
    assert result.observation.startswith("Thank you for shopping with us!")
    with pytest.raises(RuntimeError):
        ep.step("click[back to search]")


# ---------------------------------------------------------------------------------------------------------
# invalid and malformed actions
# ---------------------------------------------------------------------------------------------------------
MALFORMED = ["search[]", "click[", "search[a [b] c]", "", "x" * 10_000, "search[" + "é" * 10_000, "search[foo\nbar]",
             "click[back to\nsearch]", "\nclick[back to search]", "click[]", "search", "click", "SEARCH[shoes]",
             "Click[back to search]", "search(shoes)", "click[next >", "click[nonexistent button]",
             "click[ back to search]", "\x00", "search\t[shoes]"]


def _assert_unchanged(ep: Episode, action: str) -> None:
    before_obs, before_actions, before_steps = ep.observation(), ep.available_actions(), ep.steps
    result = ep.step(action)
    assert result.info["valid"] is False, repr(action[:40])
    reason = result.info["invalid_reason"]
    assert reason and "\n" not in reason and len(reason) < 200 + len(action), repr(action[:40])
    assert result.reward == 0.0 and not result.done
    assert result.observation == before_obs
    assert ep.available_actions() == before_actions
    assert ep.steps == before_steps + 1


@pytest.mark.parametrize("mode", ["text", "text_rich"])
def test_invalid_actions_change_nothing_on_any_page(shop, mode):
    ep, product = item_with_options(shop, mode)
    value = product.options[next(iter(product.options))][0]
    ok(ep, f"click[{value}]")
    for action in ["click[next >]", "click[search]", "click[attributes]", "click[b0]"] + MALFORMED:
        _assert_unchanged(ep, action)  # item page with a selection

    ok(ep, "click[features]")
    for action in ["click[description]", "click[buy now]", "click[next >]", f"click[{value}]"] + MALFORMED:
        _assert_unchanged(ep, action)  # sub-page

    ok(ep, "click[< prev]")
    ok(ep, "click[< prev]")
    assert (ep.state.kind, ep.state.page) == ("results", 1)
    for action in ["click[< prev]", "click[buy now]", "click[description]", f"click[{value}]"] + MALFORMED:
        _assert_unchanged(ep, action)  # results page 1

    ok(ep, "click[back to search]")
    for action in ["click[search]", "click[buy now]", "click[next >]", "click[back to search]"] + MALFORMED:
        _assert_unchanged(ep, action)  # start page


@pytest.mark.parametrize("action, reason", [
    ("", "no action: expected search[keywords] or click[one of the actions]"),
    ("search[]", "no action: expected search[keywords] or click[one of the actions]"),
    ("click[search]", "use search[keywords] to search"),
    ("click[buy now]", "'buy now' is not clickable on this page"),
    ("Click[Buy Now]", "unknown action 'Click': expected search or click"),
    ("buy[it]", "unknown action 'buy': expected search or click"),
])
def test_an_invalid_action_says_why(shop, action, reason):
    ep = Episode(shop, 0)
    result = ep.step(action)
    assert (result.info["valid"], result.info["invalid_reason"], ep.invalid_reason) == (False, reason, reason)
    assert ep.actions == [action]
    result = ep.step("search[shoes]")  # a valid action clears it
    assert (result.info["valid"], result.info["invalid_reason"], ep.invalid_reason) == (True, None, None)
    assert ep.actions == [action, "search[shoes]"]


def test_malformed_actions_never_crash(shop):
    ep = Episode(shop, 0, max_steps=1000)
    for action in MALFORMED + ["[" * 10_000, "click[search]"]:  # "search" is never clickable
        _assert_unchanged(ep, action)


@pytest.mark.parametrize("action, keywords", [
    ("search[café ☕]", ["café", "☕"]),
    ("search[ ]", ["", ""]),
    ("search[shoes] please", ["shoes"]),
    ("search[a  b]", ["a", "", "b"]),
    ("click[back to search]\n", None),
    ("search[" + "shoes " * 1700 + "]", ["shoes"] * 1700 + [""]),
])
def test_odd_but_valid_actions(shop, action, keywords):
    ep = Episode(shop, 0)
    search(ep, "shoes")
    result = ep.step(action)
    assert result.info["valid"] is True
    if keywords is None:
        assert ep.state.kind == "search"
    else:
        assert ep.state.keywords == keywords and ep.state.kind == "results" and ep.state.page == 1


def test_search_with_brackets_inside_is_invalid(shop):
    ep = Episode(shop, 0)
    _assert_unchanged(ep, "search[a [b] c]")


# ---------------------------------------------------------------------------------------------------------
# step cap and episode end
# ---------------------------------------------------------------------------------------------------------
def test_default_step_cap_is_15_and_counts_invalid_actions(shop):
    ep = Episode(shop, 0)
    assert ep.max_steps == DEFAULT_MAX_STEPS == 15
    search(ep)
    for _ in range(13):
        assert not ep.step("click[nothing]").done
    result = ep.step("click[nothing]")
    assert result.done and result.reward == 0.0
    assert result.info["end_reason"] == "step_cap" and result.info["reward_info"] is None
    with pytest.raises(RuntimeError):
        ep.step("search[shoes]")


def test_configurable_step_cap_ends_with_reward_zero_even_on_valid_steps(shop):
    ep = Episode(shop, 0, max_steps=3)
    search(ep)
    ok(ep, f"click[{ep.state.results[0].asin.lower()}]")
    result = ep.step("click[description]")
    assert result.info["valid"] and result.done and result.reward == 0.0
    assert ep.end_reason == "step_cap"


def test_buying_on_the_last_allowed_step_counts(shop):
    ep = Episode(shop, 0, max_steps=3)
    search(ep)
    ok(ep, f"click[{ep.state.results[0].asin.lower()}]")
    result = ep.step("click[buy now]")
    assert result.done and result.info["end_reason"] == "bought" and result.info["reward_info"] is not None


def test_bad_configuration_is_refused(shop):
    with pytest.raises(ValueError):
        Episode(shop, 0, "html")
    with pytest.raises(ValueError):
        Episode(shop, 0, max_steps=0)
    with pytest.raises(IndexError):
        Episode(shop, len(shop.goals))
    with pytest.raises(IndexError):
        Episode(shop, -1)


# ---------------------------------------------------------------------------------------------------------
# BatchEnv and determinism
# ---------------------------------------------------------------------------------------------------------
def _scripted(ep: Episode, t: int) -> str:
    """A policy that wanders (an invalid action, paging, an option, a sub-page), then buys."""
    opening = ["click[oops]", f"search[{ep.goal.instruction_without_price}]", "click[next >]", "click[< prev]"]
    if t < len(opening):
        return opening[t]
    kind = ep.state.kind
    if kind == "results":
        shown = ep.state.results[(ep.state.page - 1) * 10: ep.state.page * 10]
        return f"click[{shown[ep.goal_idx % len(shown)].asin.lower()}]" if shown else "click[back to search]"
    if kind == "item":
        values = [v for vs in ep.product.options.values() for v in vs]
        if t == 5 and values:
            return f"click[{values[ep.goal_idx % len(values)]}]"
        return "click[features]" if t in (5, 6) else "click[buy now]"
    if kind == "sub":
        return "click[< prev]"
    return f"search[{ep.goal.name.replace('[', ' ').replace(']', ' ')}]"


def _run_batch(shop: Shop, goals: list[int], mode: str) -> list:
    env = BatchEnv(shop, mode, max_steps=12)
    trace = [env.reset(goals)]
    t = 0
    while live := env.live():
        results = env.step({i: _scripted(env.episodes[i], t) for i in live})
        trace.append({i: (r.observation, r.reward, r.done, r.info) for i, r in results.items()})
        t += 1
    return trace


def test_batch_env_matches_single_episodes(shop):
    goals = list(range(0, 120, 3))
    env = BatchEnv(shop, "text_rich")
    observations = env.reset(goals)
    assert observations == [Episode(shop, g, "text_rich").observation() for g in goals]
    assert env.live() == list(range(len(goals)))
    singles = [Episode(shop, g, "text_rich") for g in goals]
    t = 0
    while live := env.live():
        actions = {i: _scripted(env.episodes[i], t) for i in live}
        batch = env.step(actions)
        for i, action in actions.items():
            single = singles[i].step(action)
            assert (batch[i].observation, batch[i].reward, batch[i].done) == \
                   (single.observation, single.reward, single.done)
        assert env.live() == [i for i in live if not batch[i].done]
        t += 1
    assert all(e.done for e in env.episodes) and t <= DEFAULT_MAX_STEPS
    with pytest.raises(RuntimeError):
        env.step({0: "click[back to search]"})


def test_batch_env_steps_a_subset(generated_shop):
    env = BatchEnv(generated_shop)
    env.reset([5, 6, 7])
    result = env.step({1: "search[shoes]"})
    assert list(result) == [1]
    assert [e.state.kind for e in env.episodes] == ["search", "results", "search"]
    assert [e.steps for e in env.episodes] == [0, 1, 0]


@pytest.mark.parametrize("mode", ["text", "text_rich"])
def test_runs_are_deterministic(generated_shop, mode):
    goals = list(range(40))
    fresh = Shop(generate_catalogue(num_products=300, seed=0))  # a second, independently built shop
    assert _run_batch(generated_shop, goals, mode) == _run_batch(fresh, goals, mode)


def test_runs_on_real_data_are_deterministic(real_shop):
    goals = list(range(0, 400, 10))
    assert _run_batch(real_shop, goals, "text") == _run_batch(real_shop, goals, "text")
    first = run_policy(real_shop, rule_policy, goals)
    assert first == run_policy(real_shop, rule_policy, goals)


# ---------------------------------------------------------------------------------------------------------
# scripted policies on the first 50 test goals
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def policy_results(real_shop):
    goals = list(real_shop.goals.split("test"))[:50]
    return {name: run_policy(real_shop, policy, goals) for name, policy in
            [("oracle", oracle_policy), ("rule", rule_policy)]}


def test_oracle_policy_succeeds_on_real_test_goals(policy_results):
    results = policy_results["oracle"]
    assert len(results) == 50
    success = sum(r.success for r in results) / len(results)
    assert success >= 0.9
    assert all(r.end_reason in ("bought", "step_cap") and r.steps <= 15 for r in results)


def test_rule_policy_is_below_the_oracle(policy_results):
    def success(name):
        return sum(r.success for r in policy_results[name]) / len(policy_results[name])

    def score(name):
        return sum(r.reward for r in policy_results[name]) / len(policy_results[name])

    assert success("rule") < success("oracle")
    assert score("rule") < score("oracle")
    assert all(r.steps == 3 and r.end_reason == "bought" for r in policy_results["rule"])
