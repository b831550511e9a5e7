"""bertjax: BERT pretraining and GLUE fine-tuning in JAX/Equinox.

A flat package read bottom-up, in one-way layers (tests/test_layers.py keeps them so): a module
imports only from lower layers, and never in a circle inside its own.

    L0  errors leaving domains config_schema       user errors, a failing process leaving its run;
        config_yaml config config_changes          config domains, every key (schema), YAML text
        config_help files output_dirs              in (values as written), loading; what changed
                                                   between two configs; --help and
                                                   --print-config; files and whole output
                                                   directories
    L1  ops attention layers model precision       the Equinox BERT, pure: functions with
                                                   written-out gradients, attention paths,
                                                   modules, the model, casts
    L2  loss masking optim step xla_options        device-side: losses, masking, AdamW, steps
                                                   and the XLA options they compile with
        tokenizer source_files sources hub_models prepared token_files prepare data
        glue_tasks glue glue_metrics glue_batches
                                                   host-side: text -> tokens -> batches (hub
                                                   model ids: downloaded)
        sharding processes checkpoint orbax_quiet  mesh; joining, agreeing, stopping together;
        metrics step_trace weights bundle          Orbax (and its noise after a failure),
                                                   monitoring, profiler traces, safetensors,
                                                   release bundles read and verified
        runlock sweep_state divergence             the run directory's lock; what a sweep's
                                                   folder holds; rollbacks
    L3  hf_config hf_tokenizer hf_checks hf        HF config.json, tokenizer files, checks and
        pretrained starting_points export          weights; load a model; start a run from it;
        predict plot glue_eval glue_submission     release; infer; plot; GLUE scores; the
        glue_score pretrain_run                    leaderboard's zip; scoring any classifier;
                                                   a pretraining run as resolved and resumed
    L4  pretrain_loop pretrain seed_run finetune   the two loops (pretraining: steps, run;
        glue_sweep                                 GLUE: one seed, all seeds; one run per
                                                   learning rate)
    L5  train                                      `python -m bertjax.train`: dispatch only

Import submodules directly; this file stays empty so `import bertjax` is cheap. From Python,
start with README's "From Python": config.load, pretrain.pretrain, finetune.finetune,
pretrained.load_pretrained and predict's functions.
"""

__version__ = "0.1.0"
