"""batchsage inside the training frameworks people already use.

Each integration lives in its own module and imports its framework only when that module is
imported, so ``import batchsage`` never needs them:

- :mod:`batchsage.integrations.lightning` (``pip install 'batchsage[lightning]'``): the
  ``BatchsageFinder`` callback, ``recommend_batch_size`` and ``fit_live`` for a
  ``LightningModule`` and its ``LightningDataModule``.
- :mod:`batchsage.integrations.hf` (``pip install 'batchsage[hf]'``): ``recommend_training_args``
  for a Hugging Face ``Trainer``'s arguments and the ``NoiseScaleCallback`` that logs the gradient
  noise scale during ``trainer.train()``.
- :mod:`batchsage.integrations.keras` (``pip install 'batchsage[keras]'``): ``task_from_keras``,
  ``apply_recommendation`` for ``model.fit``, a ``NoiseScaleCallback`` and a Keras Tuner
  ``BatchsageHyperModel``.

Every integration adapts the framework's objects into a :class:`batchsage.Task` (the user's model
copied, never trained; the user's loss, optimiser, data collation and validation metric), calls
batchsage's own ``recommend`` or ``fit``, and writes the answer back into the framework's objects.
The decisions are batchsage's; the integrations hold none of their own.
"""
