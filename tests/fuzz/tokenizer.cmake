# Arbitrary bytes through the text cleaner and the BPE tokenizer (real CLIP vocabulary
# from ../shared/clip, and the byte-level demo vocabulary), seeded with the reference
# cases and the vocabulary file.
clipserve_fuzzer(tokenizer_fuzzer
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/tokenizer_fuzzer.cc
  LIBS clipserve_tokenizer
  SEEDS clip)
target_compile_definitions(tokenizer_fuzzer PRIVATE
  CLIPSERVE_FUZZ_VOCAB_DIR="${CLIPSERVE_SHARED_DIR}/clip")
