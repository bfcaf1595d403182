"""`python -m rvdeploy._import_onnx ARGS`: IREE's iree-import-onnx with one fix.

IREE 3.13's importer hands `--data-dir` to onnx as a pathlib.Path, which onnx 1.23's C helper rejects
("_open_external_data(): incompatible function arguments") when it reads external weights; a str works.
"""

from iree.compiler.tools.import_onnx.__main__ import main, parse_arguments

if __name__ == "__main__":
    args = parse_arguments()
    if args.data_dir is not None:
        args.data_dir = str(args.data_dir)
    main(args)
