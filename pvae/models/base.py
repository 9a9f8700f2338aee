"""The model protocol: what every pvae model provides, each hook with a documented default.

A pvae model is a :class:`Model`, i.e. a ``PyroModule`` with a Pyro ``model`` and ``guide``
whose per-datum sites sit in ``pyro.plate("data", ...)``, a typed :class:`ModelConfig` beside it,
and a registration (``@register_model("name")`` in :mod:`pvae.models.registry`) with a small
smoke config. The runner (:mod:`pvae.runs`), the command line, the report and the evaluators
only ever call the hooks below; they never ask for a model's class name.

=====================================  =========================================================
hook                                   default
=====================================  =========================================================
``config``                             the typed config the model was built from
``model(*args)``, ``guide(*args)``     required: the generative story and the guide
``batch_args(batch)``                  ``(x,)`` from a ``(x, y)`` batch (or the batch itself)
``eval_args(batch)``                   ``batch_args(batch)``: the arguments of the bound that
                                       ``log_likelihood``, AIS and the diagnostics estimate
``initialize(data_options)``           nothing; called once on a fresh run with the training
                                       data's ``model_options()`` (image models set the
                                       decoder's output bias from the mean image)
``data_options()``                     ``{}``: options with which the run's validation and
                                       test splits are loaded (text: the training vocabulary)
``eval_datum_size(args)``              ``None``: elements one importance sample of one datum
                                       materialises, which sizes the evaluator's chunks
                                       (``None``: the datum's own size; text: length x vocab)
``sample(n, generator)``               ``NotImplementedError``: draws from the prior, no encoder
``training_setup(train, valid, ...)``  ``{}``: extra ``fit`` arguments (M2: its data stream,
                                       objective and validation-accuracy callback)
``metrics(test)``                      ``{}``: model-specific test numbers (M2: accuracy)
``likelihood_metrics(log_px, test)``   ``{}``: numbers derived from the per-datum log p(x)
                                       estimates (text: perplexity per token)
``report_items(test, out, seed)``      ``[]``: figures and tables for the run's report
=====================================  =========================================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from pyro.nn import PyroModule


def option(default: Any, help: str, *, convert: Callable[[Any], Any] | None = None) -> Any:
    """A config field: its default, a one-line ``help`` (shown by ``pvae train --model list``),
    and an optional ``convert`` that normalises what a user passes (a list to a tuple, "3" to 3)."""
    return dataclasses.field(default=default, metadata={"help": help, "convert": convert})


def ints(values: Any) -> tuple[int, ...]:
    """A tuple of ints from any sequence of numbers (JSON gives lists)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence | torch.Size):
        raise ValueError(f"expected a list of integers, got {values!r}")
    return tuple(int(v) for v in values)


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def flag(value: Any) -> bool:
    """A boolean option: a bool, 0 or 1, or one of true/false, yes/no, on/off (any case; the
    CLI's ``--model-option key=False`` arrives as the string "False", which ``bool`` would
    read as True)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"expected true or false, got {value!r}")


def width(value: Any) -> int:
    """One layer width: an int, or a one-element list of it (the CLI's ``--hidden 64``)."""
    if isinstance(value, Sequence | torch.Size) and not isinstance(value, (str, bytes)):
        if len(value) != 1:
            raise ValueError(f"expected one width (all hidden layers share it), got {value!r}")
        (value,) = value
    return int(value)


@dataclass(frozen=True)
class ModelConfig:
    """Base of every model's typed config: a frozen dataclass of :func:`option` fields.

    Subclasses declare fields with :func:`option` (redeclaring a field changes its default)
    and check values in :meth:`validate`. Build one with :meth:`from_options`, which refuses
    unknown keys; :meth:`to_dict` is the JSON form saved in run folders and checkpoints.
    """

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            convert = field.metadata.get("convert")
            value = getattr(self, field.name)
            if convert is not None and value is not None:
                try:
                    value = convert(value)
                except (TypeError, ValueError) as error:
                    raise ValueError(f"{field.name}: {error}") from None
                object.__setattr__(self, field.name, value)
        self.validate()

    def validate(self) -> None:
        """Raises ``ValueError`` for values out of range (the default accepts everything)."""

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> ModelConfig:
        """The config with ``options`` over the defaults; unknown keys are a ``ValueError``
        that lists the model's options."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise ValueError(
                f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                f"options: {', '.join(names)}"
            )
        return cls(**options)

    @classmethod
    def describe(cls) -> list[tuple[str, Any, str]]:
        """``(name, default, help)`` of every option, in declaration order."""
        return [(f.name, f.default, f.metadata.get("help", "")) for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready options (tuples become lists)."""

        def plain(value: Any) -> Any:
            return [plain(v) for v in value] if isinstance(value, (tuple, list)) else value

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class ReportItem:
    """One entry of a run's report: a figure (``path``: a PNG in the run folder) or a
    Markdown ``text`` (a table, sampled sentences), under a ``title``."""

    title: str
    path: str | None = None
    text: str | None = None

    def markdown(self) -> str:
        body = f"![{self.title}]({self.path})" if self.path is not None else (self.text or "")
        return f"## {self.title}\n{body}\n"


class Model(PyroModule):
    """Base class of pvae's models: see the module docstring for the hooks.

    ``Model(config=None, **options)``: a subclass's options are the fields of its ``Config``;
    pass a ready config or keyword options (``VAE(latent_dim=10)``). The typed config is kept
    in ``self.config``.
    """

    Config: ClassVar[type[ModelConfig]] = ModelConfig
    registry_name: ClassVar[str]
    #: keys of a dataset's ``model_options()`` the config takes from the data (``input_shape``)
    data_keys: ClassVar[tuple[str, ...]] = ()
    #: K of the test NLL when a run does not choose one (IWAE's 5000 for images; text models
    #: use the PTB literature's 500; a model without latents needs 1)
    default_eval_samples: ClassVar[int] = 5000
    #: whether ``log_likelihood`` is exact for this model (no latent variable), not a bound
    exact_likelihood: ClassVar[bool] = False

    def __init__(self, config: ModelConfig | None = None, **options: Any) -> None:
        super().__init__()
        if config is not None and options:
            raise ValueError("pass either a config or keyword options, not both")
        if config is not None and not isinstance(config, self.Config):
            raise ValueError(
                f"{type(self).__name__} takes a {self.Config.__name__}, got {type(config).__name__}"
            )
        self.config = config if config is not None else self.Config.from_options(options)

    # -- the generative story ---------------------------------------------------------------
    def model(self, *args: Any, **kwargs: Any) -> None:
        """The Pyro model ``p(x, z)``: per-datum sites inside ``pyro.plate("data", ...)``."""
        raise NotImplementedError(f"{type(self).__name__} defines no model")

    def guide(self, *args: Any, **kwargs: Any) -> None:
        """The Pyro guide ``q(z | x)``, with the model's latent site names."""
        raise NotImplementedError(f"{type(self).__name__} defines no guide")

    # -- data -------------------------------------------------------------------------------
    def batch_args(self, batch: Any) -> tuple:
        """The positional arguments of ``model``/``guide`` for one training batch: ``(x,)``
        from a ``(x, y)`` batch of a pvae dataset."""
        if isinstance(batch, (tuple, list)):
            return (batch[0],)
        return (batch,)

    def eval_args(self, batch: Any) -> tuple:
        """The arguments of the bound that evaluation estimates (``log_likelihood``, AIS,
        diagnostics) for one batch; by default those of training. A conditional model
        (CVAE: ``log p(x | y)``) needs the labels; M2 drops them (``log p(x)``)."""
        return self.batch_args(batch)

    def initialize(self, data_options: Mapping[str, Any]) -> None:
        """Called once, on a fresh run, with the training data's ``model_options()``."""

    def data_options(self) -> dict[str, Any]:
        """Modality options of :func:`pvae.data.load_dataset` with which the run's validation
        and test splits are read, so that evaluation sees the data as training did (text: the
        vocabulary kept in the config)."""
        return {}

    def eval_datum_size(self, args: tuple) -> int | None:
        """Elements one importance sample of one datum materialises in ``log_likelihood``
        (``None``: the datum's size); the evaluator sizes its sample chunks with it."""
        return None

    # -- what a trained model offers ----------------------------------------------------------
    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Any:
        """Draws ``num_samples`` data from the prior, without the encoder."""
        raise NotImplementedError(f"{type(self).__name__} cannot draw samples")

    def training_setup(self, train: Any, valid: Any = None, **options: Any) -> dict[str, Any]:
        """Extra ``pvae.infer.fit`` arguments (a data stream, an objective, callbacks) that
        override the runner's defaults; ``options`` are the run's (``num_labels``, ``seed``).
        The keys ``model`` and ``guide`` replace the pair that is trained (a model trained with
        another bound than the one it is evaluated with: the homoencoder)."""
        return {}

    def metrics(self, test: Any) -> dict[str, float]:
        """Model-specific numbers on the test set (beyond the log-likelihood), e.g.
        ``{"test_accuracy": ...}``; reported by ``pvae train`` and ``pvae evaluate``."""
        return {}

    def likelihood_metrics(self, log_likelihoods: torch.Tensor, test: Any) -> dict[str, float]:
        """Numbers derived from the importance-sampled ``log p(x)`` of every test datum
        (``(N,)``, in any order), e.g. a text model's perplexity per token."""
        return {}

    def report_items(self, test: Any, out: Path, seed: int = 0) -> list[ReportItem]:
        """Figures (written into ``out``) and tables for the run's report."""
        return []
