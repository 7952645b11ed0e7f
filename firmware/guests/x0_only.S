// x0_only: rings the host twice with x1..x3 = 0x111, 0x222, 0x333 and changes none of them in between: after
// the first exit only x0 may come back from the host (handle_pvm_entry_hvc64), so the second passes them again.
#include "guest.h"

	.text
	.global main
main:
	movz	x1, #0x111
	movz	x2, #0x222
	movz	x3, #0x333
	movz	x0, #(PKVMLAB_GUEST_DOORBELL_FUNC_ID >> 16), lsl #16
	movk	x0, #(PKVMLAB_GUEST_DOORBELL_FUNC_ID & 0xffff)
	hvc	#0
	movz	x0, #(PKVMLAB_GUEST_DOORBELL_FUNC_ID >> 16), lsl #16
	movk	x0, #(PKVMLAB_GUEST_DOORBELL_FUNC_ID & 0xffff)
	hvc	#0
	mov	x0, #0
	ret
