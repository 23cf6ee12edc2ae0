"""splitshield: privacy-preserving split inference with model-inversion defenses, attacks and evaluation.

The public API (everything else is internal)::

    import splitshield

    cem = splitshield.defense("cem", num_classes=10, epochs=20, loader=train_loader, encoder=edge)
    ...                                  # your loop: z = cem(edge(x)); loss = ce + cem.penalty(x, y, logits); ...
    result = splitshield.attack(edge, train_set, test_set, "decoder", defense=cem)
    print(result.mse, result.counts)     # an AttackResult, as the CLI stores it
    bound = splitshield.audit(edge, train_set, defense=cem)

    run = splitshield.Run.open("runs/my-run")   # what the CLI made: config, model, results, .attack(), .export()
"""

from splitshield._version import __version__

from splitshield.api import (LoopDefense, Run, attack, audit, defense, experiment, list_attacks, list_datasets,
                             list_defenses, list_models, load_dataset, load_experiment, load_plugins, register_attack,
                             register_defense, save_reconstructions)
from splitshield.attacks.base import Attack, AttackConfig
from splitshield.defenses.base import Defense, DefenseEnv, NoiseModel, Stage, StepContext
from splitshield.errors import CheckpointError, ConfigError, DatasetNotFound, UsageError, UserError
from splitshield.evaluation.attack_result import AttackResult

__all__ = ["Attack", "AttackConfig", "AttackResult", "CheckpointError", "ConfigError", "DatasetNotFound", "Defense",
           "DefenseEnv", "LoopDefense", "NoiseModel", "Run", "Stage", "StepContext", "UsageError", "UserError",
           "__version__", "attack", "audit", "defense", "experiment", "list_attacks", "list_datasets",
           "list_defenses", "list_models", "load_dataset", "load_experiment", "load_plugins", "register_attack",
           "register_defense", "save_reconstructions"]
