# Image decoding and preprocessing, seeded with the shared test images.
clipserve_fuzzer(image_fuzzer
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/image_fuzzer.cc
  LIBS clipserve_image
  SEEDS images)
