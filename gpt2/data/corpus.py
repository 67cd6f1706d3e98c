"""What a document source gives the preparation: one or more streams of texts in a fixed
order, each restartable from any document index (resumption skips what is done)."""
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional


@dataclass
class Stream:
    """Documents of one source split. `split` is the prepared split they all go to, or
    None: each segment is drawn into train or val by TRAIN_SPLIT and DATA_SPLIT_SEED."""
    name: str
    split: Optional[str]
    # open(skip) -> (texts from document `skip` on, total document count or None)
    open: Callable[[int], tuple]


@dataclass
class Corpus:
    label: str                  # readable start of the prepared directory's name
    streams: list
    inputs: dict = field(default_factory=dict)  # identity of the inputs; a change re-prepares


def texts_of(rows: Iterator, field_name: str, what: str) -> Iterator[str]:
    """The `field_name` column of batches of rows, checked to be text."""
    from gpt2.data.errors import DataError

    for batch in rows:
        try:
            column = batch[field_name]
        except KeyError:
            raise DataError(f"{what} has no field {field_name!r} (TEXT_FIELD); its fields: "
                            f"{', '.join(sorted(batch))}") from None
        for text in column:
            if not isinstance(text, str):
                raise DataError(f"{what}: a {field_name!r} value is {type(text).__name__}, "
                                f"not text (TEXT_FIELD names the text field)")
            yield text
