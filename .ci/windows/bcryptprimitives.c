/* bcryptprimitives.dll for the Windows test run under Wine 8.0, which has none.
 *
 * Binaries built by Rust 1.78 or later (cryptography's _rust.pyd among them) import
 * ProcessPrng from it. Windows' contract: fill the buffer with random bytes, return TRUE.
 * BCryptGenRandom (which Wine has) takes a ULONG length, hence the chunks.
 */
#include <windows.h>
#include <bcrypt.h>

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG chunk = length > 0x40000000 ? 0x40000000 : (ULONG)length;
        if (!BCRYPT_SUCCESS(BCryptGenRandom(NULL, data, chunk, BCRYPT_USE_SYSTEM_PREFERRED_RNG)))
            return FALSE;
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
