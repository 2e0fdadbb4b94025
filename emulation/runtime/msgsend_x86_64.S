// objc_msgSend and its variants for x86-64 (System V): save every argument register
// (and %rax, the vector-register count of variadic calls), ask the runtime for the
// method (objc_emu_lookup*, objc_runtime.cc), restore, and tail-jump to it with the
// caller's stack untouched, so methods with any number of stack arguments work.
// Messages to nil return 0 in %rax/%rdx/%xmm0/%xmm1 (Apple's nil rule).
#if defined(__x86_64__)

.macro SAVE_ARGS
    pushq %rbp
    .cfi_def_cfa_offset 16
    .cfi_offset %rbp, -16
    movq %rsp, %rbp
    .cfi_def_cfa_register %rbp
    subq $192, %rsp
    movq %rdi, 0(%rsp)
    movq %rsi, 8(%rsp)
    movq %rdx, 16(%rsp)
    movq %rcx, 24(%rsp)
    movq %r8, 32(%rsp)
    movq %r9, 40(%rsp)
    movq %rax, 48(%rsp)
    movdqa %xmm0, 64(%rsp)
    movdqa %xmm1, 80(%rsp)
    movdqa %xmm2, 96(%rsp)
    movdqa %xmm3, 112(%rsp)
    movdqa %xmm4, 128(%rsp)
    movdqa %xmm5, 144(%rsp)
    movdqa %xmm6, 160(%rsp)
    movdqa %xmm7, 176(%rsp)
.endm

.macro RESTORE_ARGS_AND_JUMP_TO_RAX
    movq %rax, %r11
    movq 0(%rsp), %rdi
    movq 8(%rsp), %rsi
    movq 16(%rsp), %rdx
    movq 24(%rsp), %rcx
    movq 32(%rsp), %r8
    movq 40(%rsp), %r9
    movq 48(%rsp), %rax
    movdqa 64(%rsp), %xmm0
    movdqa 80(%rsp), %xmm1
    movdqa 96(%rsp), %xmm2
    movdqa 112(%rsp), %xmm3
    movdqa 128(%rsp), %xmm4
    movdqa 144(%rsp), %xmm5
    movdqa 160(%rsp), %xmm6
    movdqa 176(%rsp), %xmm7
.endm

.macro LEAVE_AND_JUMP fixup
    movq %rbp, %rsp
    popq %rbp
    .cfi_def_cfa %rsp, 8
    \fixup
    jmp *%r11
.endm

    .text

// id objc_msgSend(id self, SEL op, ...)
    .globl objc_msgSend
    .type objc_msgSend, @function
    .p2align 4
objc_msgSend:
    .cfi_startproc
    testq %rdi, %rdi
    jz 1f
    SAVE_ARGS
    call objc_emu_lookup            // (self, op) -> IMP
    RESTORE_ARGS_AND_JUMP_TO_RAX
    LEAVE_AND_JUMP
1:  xorl %eax, %eax
    xorl %edx, %edx
    xorps %xmm0, %xmm0
    xorps %xmm1, %xmm1
    ret
    .cfi_endproc
    .size objc_msgSend, .-objc_msgSend

// void objc_msgSend_stret(void* result, id self, SEL op, ...): struct returned in memory.
    .globl objc_msgSend_stret
    .type objc_msgSend_stret, @function
    .p2align 4
objc_msgSend_stret:
    .cfi_startproc
    testq %rsi, %rsi
    jz 1f
    SAVE_ARGS
    movq %rsi, %rdi
    movq %rdx, %rsi
    call objc_emu_lookup
    RESTORE_ARGS_AND_JUMP_TO_RAX
    LEAVE_AND_JUMP
1:  movq %rdi, %rax
    ret
    .cfi_endproc
    .size objc_msgSend_stret, .-objc_msgSend_stret

// id objc_msgSendSuper2(struct objc_super2 {id receiver; Class current;}* super, SEL op, ...):
// the method search starts at current->superclass; the method gets the receiver.
    .globl objc_msgSendSuper2
    .type objc_msgSendSuper2, @function
    .p2align 4
objc_msgSendSuper2:
    .cfi_startproc
    SAVE_ARGS
    call objc_emu_lookup_super2     // (super, op) -> IMP
    RESTORE_ARGS_AND_JUMP_TO_RAX
    LEAVE_AND_JUMP "movq (%rdi), %rdi"
    .cfi_endproc
    .size objc_msgSendSuper2, .-objc_msgSendSuper2

    .globl objc_msgSendSuper2_stret
    .type objc_msgSendSuper2_stret, @function
    .p2align 4
objc_msgSendSuper2_stret:
    .cfi_startproc
    SAVE_ARGS
    movq %rsi, %rdi
    movq %rdx, %rsi
    call objc_emu_lookup_super2
    RESTORE_ARGS_AND_JUMP_TO_RAX
    LEAVE_AND_JUMP "movq (%rsi), %rsi"
    .cfi_endproc
    .size objc_msgSendSuper2_stret, .-objc_msgSendSuper2_stret

#else
#error "the tf-mps Objective-C emulation has an objc_msgSend for x86-64 only"
#endif

    .section .note.GNU-stack,"",@progbits
