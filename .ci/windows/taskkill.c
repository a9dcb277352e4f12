/* taskkill for the Windows test run under Wine 8.0, whose built-in taskkill.exe rejects /T.
 *
 *   taskkill [/F] [/T] /PID n
 *
 * Ends process n and, with /T, every process below it, deepest first, as Windows' own
 * taskkill /F /T does (the module under test runs it to end gcloud.cmd and its Python).
 * Exit status as Windows': 0 done, 128 no such process, 1 bad arguments.
 */
#include <windows.h>
#include <tlhelp32.h>
#include <stdio.h>
#include <wchar.h>

#define MAX_PROCESSES 8192

struct entry { DWORD pid, parent; };
static struct entry table[MAX_PROCESSES];
static int entries;

static void take_snapshot(void)
{
    PROCESSENTRY32W process = { .dwSize = sizeof(process) };
    HANDLE snapshot = CreateToolhelp32Snapshot(TH32CS_SNAPPROCESS, 0);
    if (snapshot == INVALID_HANDLE_VALUE)
        return;
    for (BOOL more = Process32FirstW(snapshot, &process); more && entries < MAX_PROCESSES;
         more = Process32NextW(snapshot, &process)) {
        table[entries].pid = process.th32ProcessID;
        table[entries].parent = process.th32ParentProcessID;
        entries++;
    }
    CloseHandle(snapshot);
}

static BOOL exists(DWORD pid)
{
    for (int i = 0; i < entries; i++)
        if (table[i].pid == pid)
            return TRUE;
    return FALSE;
}

static void end_process(DWORD pid)
{
    HANDLE process = OpenProcess(PROCESS_TERMINATE, FALSE, pid);
    if (process == NULL)
        return;
    if (TerminateProcess(process, 1))
        wprintf(L"SUCCESS: The process with PID %lu has been terminated.\n", pid);
    CloseHandle(process);
}

/* Children before their parent; the depth bound guards against a PID reused in a loop. */
static void end_tree(DWORD pid, int depth)
{
    if (depth < 64)
        for (int i = 0; i < entries; i++)
            if (table[i].parent == pid && table[i].pid != pid)
                end_tree(table[i].pid, depth + 1);
    end_process(pid);
}

static BOOL option(const wchar_t *arg, const wchar_t *name)
{
    return (arg[0] == L'/' || arg[0] == L'-') && _wcsicmp(arg + 1, name) == 0;
}

int wmain(int argc, wchar_t **argv)
{
    BOOL tree = FALSE;
    DWORD pid = 0;
    for (int i = 1; i < argc; i++) {
        if (option(argv[i], L"T"))
            tree = TRUE;
        else if (option(argv[i], L"F"))
            continue; /* always forced: there is no polite close for a console process */
        else if (option(argv[i], L"PID") && i + 1 < argc)
            pid = wcstoul(argv[++i], NULL, 10);
        else {
            fwprintf(stderr, L"ERROR: Invalid argument/option - '%ls'.\n", argv[i]);
            return 1;
        }
    }
    if (pid == 0) {
        fwprintf(stderr, L"ERROR: /PID is required.\n");
        return 1;
    }
    take_snapshot();
    if (!exists(pid)) {
        fwprintf(stderr, L"ERROR: The process \"%lu\" not found.\n", pid);
        return 128;
    }
    if (tree)
        end_tree(pid, 0);
    else
        end_process(pid);
    return 0;
}
