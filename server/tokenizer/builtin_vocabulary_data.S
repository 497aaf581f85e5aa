/* OpenAI's CLIP BPE merges, embedded verbatim; see builtin_vocabulary.h. The path
   comes from CMake (CLIPSERVE_CLIP_VOCAB_GZ). */
    .section .rodata
    .global clipserve_clip_vocab_gz_begin
    .global clipserve_clip_vocab_gz_end
    .balign 16
clipserve_clip_vocab_gz_begin:
    .incbin CLIPSERVE_CLIP_VOCAB_GZ
clipserve_clip_vocab_gz_end:
    .byte 0
    .section .note.GNU-stack,"",@progbits
