"""The build as named stages, one module each, named as the CLI prints them: fetch, check, runtime, import
(import_), entry points (entrypoints), mmt4d lowering (lower), pack weights (weights), compile, inspect,
bundle. Each is `run(ctx) -> ctx` on a BuildContext (context); chain runs and times them; rvdeploy.api.build
lists them. The modules that do the work (graphinfo, importer, entrypoints, mmt4d, params, compiler,
dispatches, ...) stay beside this package: a stage module only calls them and records what they made."""
