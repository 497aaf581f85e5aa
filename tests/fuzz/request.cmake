# The requests whose bytes the server reads itself (server/service/request_parsing),
# checked against libprotobuf's parser; seeded with valid requests of each type,
# encoded by protoc at build time from the text protos in request_seeds/ (each named
# after its request type).
set(request_seeds ${CMAKE_CURRENT_BINARY_DIR}/seeds/request_fuzzer)
file(MAKE_DIRECTORY ${request_seeds})
file(GLOB seed_texts CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/request_seeds/*.txtpb)
set(seed_files "")
foreach(seed_text ${seed_texts})
  get_filename_component(seed_name ${seed_text} NAME_WE)
  string(REGEX REPLACE "_.*" "" seed_type ${seed_name})
  set(seed_file ${request_seeds}/${seed_name}.bin)
  add_custom_command(
    OUTPUT ${seed_file}
    COMMAND sh -c "\"$1\" --encode=clipserve.v1.$2 -I \"$3\" -I \"$4\" -I \"$5\" clipserve/v1/clip_service.proto <\"$6\" >\"$7\""
            encode $<TARGET_FILE:protobuf::protoc> ${seed_type} ${PROJECT_SOURCE_DIR}/proto
            ${GOOGLEAPIS_DIR} ${Protobuf_INCLUDE_DIR} ${seed_text} ${seed_file}
    DEPENDS ${seed_text} ${PROJECT_SOURCE_DIR}/proto/clipserve/v1/clip_service.proto
    COMMENT "request_fuzzer seed ${seed_name}"
    VERBATIM)
  list(APPEND seed_files ${seed_file})
endforeach()

clipserve_fuzzer(request_fuzzer
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/request_fuzzer.cc
          ${PROJECT_SOURCE_DIR}/server/service/request_parsing.cc
          ${PROJECT_SOURCE_DIR}/server/service/grpc_status.cc
  LIBS clipserve_proto clipserve_common clipserve_tokenizer gRPC::grpc++
       absl::flat_hash_map absl::strings absl::status
  SEED_DIRS ${request_seeds})
add_custom_target(request_fuzzer_seeds ALL DEPENDS ${seed_files})
add_dependencies(request_fuzzer request_fuzzer_seeds)
