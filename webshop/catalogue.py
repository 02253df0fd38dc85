"""The product catalogue: one `Product` per ASIN, loaded exactly like upstream `load_products`.

Three sources give the same products:
  * the official raw files (`items_shuffle_1000.json` or `items_shuffle.json`, with `items_ins_v2*.json`
    and optionally `items_human_ins.json`), processed like upstream (`iter_raw`), read one product at a time;
  * the processed JSONL form `{"id", "contents", "product"}` that upstream's search index stores
    (`iter_processed`), e.g. `../shared/webshop/items_shuffle_1000.processed_from_lucene_index.jsonl`;
  * our seeded generator (`webshop.generate`), the embedded default that needs no download.

A `Catalogue` holds its products as one Arrow table (`PRODUCTS_SCHEMA`), in memory or memory-mapped from a
stored catalogue, and decodes a `Product` only when a page or a reward asks for it: the full 1.18M-product
catalogue is never a million Python objects.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from webshop.json_stream import DataError, iter_json

# Keys upstream `clean_product_keys` drops before anything else reads a product.
_DROPPED_KEYS = (
    "product_information", "brand", "brand_url", "list_price", "availability_quantity",
    "availability_status", "total_reviews", "total_answered_questions", "seller_id", "seller_name",
    "fulfilled_by_amazon", "fast_track_message", "aplus_present", "small_description_old",
)
RAW_REQUIRED = ("asin", "name", "full_description", "small_description", "customization_options",
                "category", "query", "product_category")
DECODED_PRODUCTS = 8192  # products a catalogue keeps decoded (the first decoded go first)
_BATCH_ROWS = 20_000  # rows decoded at a time when reading many


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
        return search_text(self.title, self.description, self.bullet_points, self.options)


STRING_LIST = pa.list_(pa.string())
PRODUCTS_SCHEMA = pa.schema([
    ("asin", pa.string()), ("title", pa.string()), ("description", pa.string()),
    ("bullet_points", STRING_LIST), ("pricing", pa.list_(pa.float64())), ("price_text", pa.string()),
    ("options", pa.list_(pa.struct([("name", pa.string()), ("values", STRING_LIST)]))),
    ("attributes", STRING_LIST), ("category", pa.string()), ("query", pa.string()),
    ("product_category", pa.string()), ("instruction_text", pa.string()),
    ("instruction_attributes", STRING_LIST),
    ("human_instructions", pa.list_(pa.struct([("instruction", pa.string()),
                                               ("instruction_attributes", STRING_LIST),
                                               ("instruction_options", STRING_LIST)]))),
])


def search_text(title: str, description: str, bullet_points: list[str], options: dict[str, list[str]]) -> str:
    """The text upstream indexes for BM25 (`convert_product_file_format.py`)."""
    option_text = ", and ".join(f"{name}: {', '.join(values)}" for name, values in options.items())
    first_bullet = bullet_points[0] if bullet_points else ""
    return f"{title} {description} {first_bullet} {option_text}".lower()


def products_table(products: Iterable[Product]) -> pa.Table:
    """Products as rows of `PRODUCTS_SCHEMA` (options as an ordered list of name/values pairs)."""
    return pa.Table.from_pylist([{
        "asin": p.asin, "title": p.title, "description": p.description, "bullet_points": p.bullet_points,
        "pricing": p.pricing, "price_text": p.price_text,
        "options": [{"name": k, "values": v} for k, v in p.options.items()], "attributes": p.attributes,
        "category": p.category, "query": p.query, "product_category": p.product_category,
        "instruction_text": p.instruction_text, "instruction_attributes": p.instruction_attributes,
        "human_instructions": [{"instruction": h.instruction, "instruction_attributes": h.instruction_attributes,
                                "instruction_options": h.instruction_options} for h in p.human_instructions],
    } for p in products], schema=PRODUCTS_SCHEMA)


def _product(row: dict) -> Product:
    row["options"] = {o["name"]: o["values"] for o in row["options"]}
    row["human_instructions"] = [HumanInstruction(**h) for h in row["human_instructions"]]
    return Product(**row)


def _decode_all(table: pa.Table) -> Iterator[Product]:
    """Every row's product, `_BATCH_ROWS` rows converted at a time (not kept: a pass over many products)."""
    for batch in table.to_batches(_BATCH_ROWS):
        yield from map(_product, batch.to_pylist())


class Catalogue:
    """Products in file order over one Arrow table, with an ASIN index. `name` identifies the source for
    caching and logs. A product is decoded from its row when asked for; the last `DECODED_PRODUCTS` decoded stay."""

    def __init__(self, name: str, table: pa.Table):
        if table.schema != PRODUCTS_SCHEMA:
            raise ValueError(f"catalogue {name}: products table has columns {table.schema.names}, "
                             f"expected those of PRODUCTS_SCHEMA: {PRODUCTS_SCHEMA.names}")
        self.name, self.table = name, table
        self.by_asin = {asin: i for i, asin in enumerate(table.column("asin").to_pylist())}
        self._decoded: dict[int, Product] = {}  # row -> product, oldest first (the first out when full)

    @classmethod
    def from_products(cls, name: str, products: Iterable[Product]) -> Catalogue:
        return cls(name, products_table(products))

    def __len__(self) -> int:
        return self.table.num_rows

    def product(self, asin: str) -> Product:
        return self.product_at(self.by_asin[asin])

    def products_at(self, rows: Sequence[int]) -> list[Product]:
        """The products in `rows`, decoded together when not decoded yet (their rows copied side by side, then
        converted at once: half the cost of converting them one by one; `Table.take` over a memory-mapped
        table's many record batches costs ~15 ms a row), then kept."""
        decoded = self._decoded
        missing = [r for r in rows if r not in decoded]
        if not missing:
            return [decoded[r] for r in rows]
        missing = list(dict.fromkeys(missing))
        side_by_side = pa.concat_tables([self.table.slice(r, 1) for r in missing]).combine_chunks()
        for r, row in zip(missing, side_by_side.to_pylist()):
            decoded[r] = _product(row)
        products = [decoded[r] for r in rows]
        while len(decoded) > DECODED_PRODUCTS:  # the oldest go first (after this call has what it asked for)
            decoded.pop(next(iter(decoded)))
        return products

    def product_at(self, row: int) -> Product:
        product = self._decoded.get(row)
        return product if product is not None else self.products_at([row])[0]

    @property
    def products(self) -> Rows:
        """Every product, in file order, decoded as it is read."""
        return Rows(self, range(len(self)))

    def rows(self, indices: Sequence[int]) -> Rows:
        return Rows(self, indices)

    def prices(self) -> dict[str, list[float]]:
        """ASIN -> `pricing` of every product, in file order (goal building draws prices over all of them)."""
        return dict(zip(self.by_asin, self.table.column("pricing").to_pylist()))

    def products_where(self, column: str) -> Iterator[Product]:
        """The products whose `column` is set (not null, not an empty list), in file order."""
        values = self.table.column(column)
        mask = pc.is_valid(values)
        if pa.types.is_list(values.type):
            mask = pc.and_(mask, pc.greater(pc.fill_null(pc.list_value_length(values), 0), 0))
        yield from _decode_all(self.table.filter(mask))

    def search_texts(self) -> Iterator[str]:
        """Every product's search text, in file order, a batch of rows decoded at a time."""
        columns = self.table.select(["title", "description", "bullet_points", "options"])
        for batch in columns.to_batches(_BATCH_ROWS):
            for r in batch.to_pylist():
                yield search_text(r["title"], r["description"], r["bullet_points"],
                                  {o["name"]: o["values"] for o in r["options"]})


class Rows(Sequence):
    """Products of a catalogue by row index (a search's results, or all of them), decoded when read."""

    def __init__(self, catalogue: Catalogue, indices: Sequence[int]):
        self.catalogue, self.indices = catalogue, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.catalogue.products_at(self.indices[i])
        return self.catalogue.product_at(self.indices[i])

    def __iter__(self) -> Iterator[Product]:
        if self.indices == range(len(self.catalogue)):  # all of them: a batch of rows at a time, uncached
            yield from _decode_all(self.catalogue.table)
        else:
            yield from map(self.catalogue.product_at, self.indices)

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None


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


def iter_raw(items_path: str | Path, attrs_path: str | Path, human_path: str | Path | None = None,
             num_products: int | None = None) -> Iterator[Product]:
    """The official raw product file's products, one at a time, processed exactly like upstream `load_products`.

    The product file is streamed (the full one is 5.5 GB); the attribute and human-instruction files, keyed by
    ASIN, are read whole. Products with `asin == 'nan'` or longer than 10 characters, and repeated ASINs, are
    skipped; `num_products` truncates the raw list first, as upstream does.
    """
    items_path, attrs_path = Path(items_path), Path(attrs_path)
    if not items_path.is_file():
        raise DataError(f"{items_path}: data file not found")
    attrs = _read_json(attrs_path)
    human = _read_json(Path(human_path)) if human_path else {}
    seen: set[str] = set()
    for i, p in iter_json(items_path):
        if not isinstance(i, int):
            raise DataError(f"{items_path}: expected a JSON list of products, got an object")
        if num_products is not None and i >= num_products:
            return
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
        yield Product(
            asin=asin, title=p["name"], description=p["full_description"],
            bullet_points=list(bullets) if isinstance(bullets, list) else [bullets],
            pricing=pricing, price_text=price_text,
            options=parse_options(p["customization_options"], f"{where} (asin {asin})"),
            attributes=attributes, category=p["category"], query=p["query"].lower().strip(),
            product_category=p["product_category"], instruction_text=ins_text, instruction_attributes=ins_attrs,
            human_instructions=_human(human.get(asin)),
        )


def iter_processed(jsonl_path: str | Path, attrs_path: str | Path | None = None,
                   num_products: int | None = None) -> Iterator[Product]:
    """The processed JSONL form's products, one line at a time (`product` already went through `load_products`).

    The attribute file, when given, adds the synthetic-goal instruction fields (the processed records were
    written in upstream's human-goal mode, which leaves them out).
    """
    jsonl_path = Path(jsonl_path)
    if not jsonl_path.is_file():
        raise DataError(f"{jsonl_path}: data file not found")
    attrs = _read_json(Path(attrs_path)) if attrs_path else None
    with jsonl_path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if num_products is not None and lineno > num_products:
                return
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
                yield Product(
                    asin=asin, title=p["Title"], description=p["Description"], bullet_points=p["BulletPoints"],
                    pricing=[float(x) for x in p["pricing"]], price_text=p["Price"], options=p["options"],
                    attributes=p["Attributes"], category=p["category"], query=p["query"],
                    product_category=p["product_category"], instruction_text=ins_text,
                    instruction_attributes=ins_attrs, human_instructions=_human(p.get("instructions")),
                )
            except KeyError as e:
                raise DataError(f"{where} (asin {p.get('asin', '?')}): has no field {e.args[0]!r}") from None
            except (TypeError, ValueError) as e:
                raise DataError(f"{where} (asin {p.get('asin', '?')}): a field has the wrong type ({e})") from None


def load_raw(items_path: str | Path, attrs_path: str | Path, human_path: str | Path | None = None,
             num_products: int | None = None) -> Catalogue:
    """`iter_raw`'s products as a catalogue named after the product file."""
    return Catalogue.from_products(Path(items_path).stem, iter_raw(items_path, attrs_path, human_path, num_products))


def load_processed(jsonl_path: str | Path, attrs_path: str | Path | None = None,
                   num_products: int | None = None) -> Catalogue:
    """`iter_processed`'s products as a catalogue named after the JSONL file."""
    return Catalogue.from_products(Path(jsonl_path).name.split(".")[0],
                                   iter_processed(jsonl_path, attrs_path, num_products))


RAW_FILES = ("items_shuffle_1000.json", "items_shuffle.json")
PROCESSED_FILE = "items_shuffle_1000.processed_from_lucene_index.jsonl"
ATTR_FILES = {"items_shuffle_1000.json": "items_ins_v2_1000.json", "items_shuffle.json": "items_ins_v2.json",
              PROCESSED_FILE: "items_ins_v2_1000.json"}
HUMAN_FILE = "items_human_ins.json"


def iter_dir(data_dir: str | Path, num_products: int | None = None) -> tuple[Path, Iterator[Product]]:
    """(product file, its products one at a time) for whichever upstream form a data folder holds: raw files
    first, else the processed JSONL."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data folder not found")
    for raw in RAW_FILES:
        if (data_dir / raw).is_file():
            human = data_dir / HUMAN_FILE
            return data_dir / raw, iter_raw(data_dir / raw, data_dir / ATTR_FILES[raw],
                                            human if human.is_file() else None, num_products)
    if (data_dir / PROCESSED_FILE).is_file():
        return data_dir / PROCESSED_FILE, iter_processed(data_dir / PROCESSED_FILE,
                                                         data_dir / ATTR_FILES[PROCESSED_FILE], num_products)
    raise DataError(f"{data_dir}: no product file (expected one of {', '.join(RAW_FILES + (PROCESSED_FILE,))})")


def load_dir(data_dir: str | Path, num_products: int | None = None) -> Catalogue:
    """The products of a data folder (`iter_dir`) as an in-memory catalogue named after the product file."""
    source, products = iter_dir(data_dir, num_products)
    catalogue = Catalogue.from_products(source.name.split(".")[0], products)
    if not len(catalogue):  # a catalogue without products would be cached and then fail far from its cause
        raise DataError(f"{source}: no products (expected a JSON list of products)")
    return catalogue
