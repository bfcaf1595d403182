"""What rvdeploy compares itself with on the same board: llama.cpp, built from source for the board's ISA
(llamacpp_build), fed the same weights as GGUF (gguf), measured with its own llama-bench (llamabench);
llamacpp puts the first two together for `bench --compare llama.cpp`."""
