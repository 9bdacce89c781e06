/*
 * Minimal bcryptprimitives.dll shim for running Rust test binaries under Wine.
 *
 * Why: Rust's std (>= 1.78) gets its randomness (e.g. the HashMap seed) from
 * ProcessPrng() in bcryptprimitives.dll.  Wine 8.0 (Debian 12) does not ship
 * that DLL/export, so every x86_64-pc-windows-gnu binary fails to load.  This
 * DLL exports exactly `ProcessPrng` and fills the buffer via RtlGenRandom
 * (advapi32!SystemFunction036).  It is found through WINEPATH; it is only for
 * CI under Wine and is never shipped.
 *
 * Build: x86_64-w64-mingw32-gcc -O2 -shared -o bcryptprimitives.dll \
 *          bcryptprimitives.c bcryptprimitives.def -ladvapi32
 */
#include <windows.h>

/* advapi32!SystemFunction036, a.k.a. RtlGenRandom. */
BOOLEAN WINAPI SystemFunction036(PVOID RandomBuffer, ULONG RandomBufferLength);

BOOL WINAPI ProcessPrng(PBYTE pbData, SIZE_T cbData)
{
    /* RtlGenRandom takes a ULONG length: feed large requests in chunks. */
    while (cbData > 0) {
        ULONG chunk = cbData > 0x40000000u ? 0x40000000u : (ULONG)cbData;
        if (!SystemFunction036(pbData, chunk))
            return FALSE;
        pbData += chunk;
        cbData -= chunk;
    }
    return TRUE;
}

BOOL WINAPI DllMain(HINSTANCE inst, DWORD reason, LPVOID reserved)
{
    (void)inst; (void)reason; (void)reserved;
    return TRUE;
}
