"""The names of a bundle's files and of its parameter scope: one place, so the build that writes them, the
runner's command line and the readers cannot drift apart."""

MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"  # the manifest's hashes in `sha256sum -c` form, for the board-side launcher
RESERVED = (MANIFEST, SUMS)  # written beside the files, never listed among them

MODULE = "model.vmfb"  # the compiled IREE module
PARAMETERS = "model.irpa"  # the weights, packed as the module reads them
PARAMETER_SCOPE = "model"  # the scope the module's parameters are named in (--parameters=SCOPE=FILE)
DISPATCHES = "dispatches.json"  # the dispatch report inspect reads
TOKENIZER = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"  # the chat template (run --chat)
CONFIG = "config.json"  # the model's own config.json
RUNTIME_DIR = "runtime"  # the bundled IREE runtime and runner
