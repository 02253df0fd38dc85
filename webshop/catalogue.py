"""The product catalogue: one `Product` per ASIN, loaded exactly like upstream `load_products`.

Three sources give the same `Catalogue`:
  * the official raw files (`items_shuffle_1000.json` or `items_shuffle.json`, with `items_ins_v2*.json`
    and optionally `items_human_ins.json`), processed like upstream (`load_raw`);
  * the processed JSONL form `{"id", "contents", "product"}` that upstream's search index stores
    (`load_processed`), e.g. `../shared/webshop/items_shuffle_1000.processed_from_lucene_index.jsonl`;
  * our seeded generator (`webshop.generate`), the embedded default that needs no download.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

# Keys upstream `clean_product_keys` drops before anything else reads a product.
_DROPPED_KEYS = (
    "product_information", "brand", "brand_url", "list_price", "availability_quantity",
    "availability_status", "total_reviews", "total_answered_questions", "seller_id", "seller_name",
    "fulfilled_by_amazon", "fast_track_message", "aplus_present", "small_description_old",
)
RAW_REQUIRED = ("asin", "name", "full_description", "small_description", "customization_options",
                "category", "query", "product_category")


class DataError(ValueError):
    """A data file is missing or malformed; the message is one line naming the file and the field."""


@dataclass(slots=True)
class HumanInstruction:
    """One crowd-sourced instruction from `items_human_ins.json` (upstream's human goals)."""

    instruction: str
    instruction_attributes: list[str]
    instruction_options: list[str]


@dataclass(slots=True)
class Product:
    """A product as upstream's pages and reward see it (after `load_products`)."""

    asin: str
    title: str                      # upstream `Title` (== `name`)
    description: str                # upstream `Description` (== `full_description`)
    bullet_points: list[str]        # upstream `BulletPoints`
    pricing: list[float]            # at most two floats; a range when two
    price_text: str                 # "$x" or "$x to $y", Python float repr
    options: dict[str, list[str]]   # option name -> values, lower-cased, "/" -> " | ", in page order
    attributes: list[str]           # from the attribute file, or ["DUMMY_ATTR"]
    category: str                   # one of beauty, electronics, fashion, garden, grocery
    query: str                      # the Amazon query the product was scraped with, lower-cased
    product_category: str           # "A › B › C" breadcrumb
    instruction_text: str | None = None           # synthetic-goal instruction (attribute file)
    instruction_attributes: list[str] | None = None
    human_instructions: list[HumanInstruction] = field(default_factory=list)

    @property
    def search_text(self) -> str:
        """The text upstream indexes for BM25 (`convert_product_file_format.py`)."""
        option_text = ", and ".join(f"{name}: {', '.join(values)}" for name, values in self.options.items())
        first_bullet = self.bullet_points[0] if self.bullet_points else ""
        return f"{self.title} {self.description} {first_bullet} {option_text}".lower()


@dataclass
class Catalogue:
    """Products in file order, with an ASIN index. `name` identifies the source for caching and logs."""

    name: str
    products: list[Product]
    by_asin: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.by_asin = {p.asin: i for i, p in enumerate(self.products)}

    def __len__(self) -> int:
        return len(self.products)

    def product(self, asin: str) -> Product:
        return self.products[self.by_asin[asin]]


def parse_price(pricing: str, where: str) -> tuple[list[float], str]:
    """Upstream's price parsing: split on '$', keep digits and dots, at most two values."""
    if not pricing:
        return [100.0], "$100.0"
    try:
        values = [float(Decimal(re.sub(r"[^\d.]", "", part))) for part in pricing.split("$")[1:]]
    except InvalidOperation:
        raise DataError(f"{where}: field 'pricing' = {pricing!r} is not a '$x' or '$x - $y' price") from None
    if not values:
        raise DataError(f"{where}: field 'pricing' = {pricing!r} has no '$' amount")
    if len(values) == 1:
        return values, f"${values[0]}"
    return values[:2], f"${values[0]} to ${values[1]}"


def parse_options(customization_options, where: str) -> dict[str, list[str]]:
    """Upstream: option names lower-cased; values stripped, '/' -> ' | ', lower-cased."""
    options: dict[str, list[str]] = {}
    if not customization_options:
        return options
    if not isinstance(customization_options, dict):
        raise DataError(f"{where}: field 'customization_options' is {type(customization_options).__name__}, "
                        "expected an object of option lists")
    for name, contents in customization_options.items():
        if contents is None:
            continue
        try:
            options[name.lower()] = [c["value"].strip().replace("/", " | ").lower() for c in contents]
        except (KeyError, TypeError, AttributeError):
            raise DataError(f"{where}: field 'customization_options.{name}' needs a list of {{'value': str}}") from None
    return options


def _read_json(path: Path):
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None


def _attributes_for(attrs: dict, asin: str):
    """(attributes, synthetic instruction, its attributes) from the attribute file; no entry, no instruction."""
    entry = attrs.get(asin) or {}
    return entry.get("attributes", ["DUMMY_ATTR"]), entry.get("instruction"), entry.get("instruction_attributes")


def _human(entries) -> list[HumanInstruction]:
    return [HumanInstruction(e["instruction"], list(e["instruction_attributes"]), list(e["instruction_options"]))
            for e in entries or []]


def load_raw(items_path: str | Path, attrs_path: str | Path, human_path: str | Path | None = None,
             num_products: int | None = None) -> Catalogue:
    """Load the official raw product file exactly like upstream `load_products`.

    Products with `asin == 'nan'` or longer than 10 characters, and repeated ASINs, are skipped. Synthetic-goal
    instructions come from the attribute file; human instructions from `items_human_ins.json` when given.
    """
    items_path, attrs_path = Path(items_path), Path(attrs_path)
    raw = _read_json(items_path)
    if not isinstance(raw, list):
        raise DataError(f"{items_path}: expected a JSON list of products, got {type(raw).__name__}")
    attrs = _read_json(attrs_path)
    human = _read_json(Path(human_path)) if human_path else {}
    if num_products is not None:
        raw = raw[:num_products]
    products, seen = [], set()
    for i, p in enumerate(raw):
        where = f"{items_path}: product {i}"
        if not isinstance(p, dict):
            raise DataError(f"{where} is {type(p).__name__}, expected an object")
        for key in _DROPPED_KEYS:
            p.pop(key, None)
        missing = [k for k in RAW_REQUIRED if k not in p]
        if missing:
            raise DataError(f"{where} (asin {p.get('asin', '?')}) has no field {missing[0]!r}")
        asin = p["asin"]
        if asin == "nan" or len(asin) > 10 or asin in seen:
            continue
        seen.add(asin)
        pricing, price_text = parse_price(p.get("pricing") or "", f"{where} (asin {asin})")
        bullets = p["small_description"]
        attributes, ins_text, ins_attrs = _attributes_for(attrs, asin)
        products.append(Product(
            asin=asin, title=p["name"], description=p["full_description"],
            bullet_points=list(bullets) if isinstance(bullets, list) else [bullets],
            pricing=pricing, price_text=price_text,
            options=parse_options(p["customization_options"], f"{where} (asin {asin})"),
            attributes=attributes, category=p["category"], query=p["query"].lower().strip(),
            product_category=p["product_category"], instruction_text=ins_text, instruction_attributes=ins_attrs,
            human_instructions=_human(human.get(asin)),
        ))
    return Catalogue(items_path.stem, products)


def load_processed(jsonl_path: str | Path, attrs_path: str | Path | None = None) -> Catalogue:
    """Load the processed JSONL form (`product` already went through `load_products`).

    The attribute file, when given, adds the synthetic-goal instruction fields (the processed records were
    written in upstream's human-goal mode, which leaves them out).
    """
    jsonl_path = Path(jsonl_path)
    if not jsonl_path.is_file():
        raise DataError(f"{jsonl_path}: data file not found")
    attrs = _read_json(Path(attrs_path)) if attrs_path else None
    products = []
    with jsonl_path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            where = f"{jsonl_path}: line {lineno}"
            try:
                p = json.loads(line)["product"]
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not valid JSON ({e.msg})") from None
            except (KeyError, TypeError):
                raise DataError(f"{where}: has no field 'product'") from None
            try:
                asin = p["asin"]
                ins_text = ins_attrs = None
                if attrs is not None:
                    _, ins_text, ins_attrs = _attributes_for(attrs, asin)
                products.append(Product(
                    asin=asin, title=p["Title"], description=p["Description"], bullet_points=p["BulletPoints"],
                    pricing=[float(x) for x in p["pricing"]], price_text=p["Price"], options=p["options"],
                    attributes=p["Attributes"], category=p["category"], query=p["query"],
                    product_category=p["product_category"], instruction_text=ins_text,
                    instruction_attributes=ins_attrs, human_instructions=_human(p.get("instructions")),
                ))
            except KeyError as e:
                raise DataError(f"{where} (asin {p.get('asin', '?')}): has no field {e.args[0]!r}") from None
            except (TypeError, ValueError) as e:
                raise DataError(f"{where} (asin {p.get('asin', '?')}): a field has the wrong type ({e})") from None
    return Catalogue(jsonl_path.name.split(".")[0], products)


RAW_FILES = ("items_shuffle_1000.json", "items_shuffle.json")
PROCESSED_FILE = "items_shuffle_1000.processed_from_lucene_index.jsonl"
ATTR_FILES = {"items_shuffle_1000.json": "items_ins_v2_1000.json", "items_shuffle.json": "items_ins_v2.json",
              PROCESSED_FILE: "items_ins_v2_1000.json"}
HUMAN_FILE = "items_human_ins.json"


def load_dir(data_dir: str | Path, num_products: int | None = None) -> Catalogue:
    """Load whichever upstream form a data folder holds: raw files first, else the processed JSONL."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data folder not found")
    for raw in RAW_FILES:
        if (data_dir / raw).is_file():
            human = data_dir / HUMAN_FILE
            return _not_empty(load_raw(data_dir / raw, data_dir / ATTR_FILES[raw],
                                       human if human.is_file() else None, num_products), data_dir / raw)
    if (data_dir / PROCESSED_FILE).is_file():
        catalogue = load_processed(data_dir / PROCESSED_FILE, data_dir / ATTR_FILES[PROCESSED_FILE])
        if num_products is not None:
            catalogue = Catalogue(catalogue.name, catalogue.products[:num_products])
        return _not_empty(catalogue, data_dir / PROCESSED_FILE)
    raise DataError(f"{data_dir}: no product file (expected one of {', '.join(RAW_FILES + (PROCESSED_FILE,))})")


def _not_empty(catalogue: Catalogue, source: Path) -> Catalogue:
    """A catalogue without products would be cached and then fail far from its cause."""
    if not catalogue.products:
        raise DataError(f"{source}: no products (expected a JSON list of products)")
    return catalogue
