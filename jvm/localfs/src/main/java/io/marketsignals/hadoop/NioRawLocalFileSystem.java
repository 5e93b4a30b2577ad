package io.marketsignals.hadoop;

import java.io.File;
import java.io.FileNotFoundException;
import java.io.IOException;
import java.net.URI;
import java.net.URISyntaxException;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Paths;
import java.nio.file.attribute.BasicFileAttributes;
import java.nio.file.attribute.GroupPrincipal;
import java.nio.file.attribute.PosixFilePermissions;
import java.nio.file.attribute.UserPrincipal;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FileStatus;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.fs.PathFilter;
import org.apache.hadoop.fs.RawLocalFileSystem;
import org.apache.hadoop.fs.permission.FsPermission;
import org.apache.hadoop.io.nativeio.NativeIO;

/**
 * Hadoop's local file system without a child process per file, and with one {@code stat} per file status.
 *
 * <p>Without Hadoop's native library (libhadoop, which Maven Central does not carry), {@link RawLocalFileSystem}
 * runs {@code chmod} in a child process to set the permission of every file and directory it creates, and
 * {@code readlink} in another for every {@link #getFileLinkStatus} (what a {@code FileContext} rename asks of
 * its source and target). Spark's streaming checkpoint (offset and commit logs, each state store's changelog)
 * and Delta's log write their files that way: ~45 ms per small file from a JVM of 1.5 GB, most of a
 * micro-batch's checkpoint time. This class sets permissions with {@code java.nio} and looks for a symbolic
 * link with {@code java.nio}, and leaves everything else, including symbolic links themselves, to Hadoop.
 *
 * <p>Hadoop builds a file's status from five {@code java.io} calls (exists, length, isDirectory, lastModified
 * and the access time, each a {@code stat}) and qualifies its path through three URI parses, and a listing
 * does that for every entry before its caller's filter sees the entry: ~10 us an entry. Delta lists a
 * table's whole {@code _delta_log} at the start of every transaction on a local path, so each file kept
 * there, and each one's {@code .crc} sidecar (which the checksummed file system filters out of the listing
 * afterwards), cost every audit write. Here a status is one {@code stat} ({@code java.nio}'s attributes,
 * which follow links as {@code java.io} does) and one URI, and a listing's filter sees each entry's path
 * before that {@code stat}: ~2 us an entry (bench/ROUNDS.md, thirty-sixth round). The owner, group and
 * permission are read when asked, as Hadoop does, but with {@code java.nio} and not in an {@code ls -ld}
 * child process.
 */
public class NioRawLocalFileSystem extends RawLocalFileSystem {

  private long blockSize;

  @Override
  public void initialize(URI uri, Configuration conf) throws IOException {
    super.initialize(uri, conf);
    blockSize = getDefaultBlockSize(new Path(uri)); // what Hadoop keeps for its file statuses
  }

  @Override
  public void setPermission(Path p, FsPermission permission) throws IOException {
    if (permission.getStickyBit() || NativeIO.isAvailable()) {
      super.setPermission(p, permission); // rwx bits only below; the native library needs no help
      return;
    }
    try {
      // FsPermission prints "rwxr-x---" (nine characters without a sticky bit), which java.nio reads
      Files.setPosixFilePermissions(pathToFile(p).toPath(), PosixFilePermissions.fromString(permission.toString()));
    } catch (NoSuchFileException e) {
      throw new FileNotFoundException("File " + p + " does not exist");
    }
  }

  @Override
  public FileStatus getFileLinkStatus(Path f) throws IOException {
    if (Files.isSymbolicLink(pathToFile(f).toPath())) {
      return super.getFileLinkStatus(f); // a link: Hadoop's own answer, child process and all
    }
    // not a link: Hadoop's readlink finds no target and then answers with the file's status, as here
    return getFileStatus(f);
  }

  @Override
  public FileStatus getFileStatus(Path f) throws IOException {
    File file = pathToFile(f);
    FileStatus status = status(file, qualified(file));
    if (status == null) {
      throw new FileNotFoundException("File " + f + " does not exist");
    }
    return status;
  }

  @Override
  public FileStatus[] listStatus(Path f) throws IOException {
    return list(f, null);
  }

  /** The checksummed file system lists through this, with a filter that leaves out the .crc files. */
  @Override
  public FileStatus[] listStatus(Path f, PathFilter filter) throws IOException {
    return list(f, filter);
  }

  private FileStatus[] list(Path f, PathFilter filter) throws IOException {
    FileStatus status = getFileStatus(f);
    if (!status.isDirectory()) {
      return filter == null || filter.accept(status.getPath()) ? new FileStatus[] {status} : new FileStatus[0];
    }
    File file = pathToFile(f);
    List<FileStatus> results = new ArrayList<>();
    try (DirectoryStream<java.nio.file.Path> entries = Files.newDirectoryStream(file.toPath())) {
      for (java.nio.file.Path entry : entries) {
        File child = new File(file, entry.getFileName().toString());
        Path path = qualified(child);
        if (filter != null && !filter.accept(path)) {
          continue;
        }
        FileStatus childStatus = status(child, path);
        if (childStatus != null) { // gone since the directory was read, as Hadoop skips it
          results.add(childStatus);
        }
      }
    }
    return results.toArray(new FileStatus[0]);
  }

  /**
   * The path Hadoop gives a file's status, {@code new Path(file.getPath()).makeQualified(getUri(),
   * getWorkingDirectory())}, as the one URI that builds for an absolute path on {@code file:///}. Hadoop's way
   * parses the path into a URI three times: ~3 us a file, twice the {@code stat}.
   */
  private Path qualified(File file) {
    URI uri = getUri();
    if (file.isAbsolute() && uri.getAuthority() == null) {
      try {
        return new Path(new URI(uri.getScheme(), "", file.getPath(), null, null));
      } catch (URISyntaxException e) {
        // Hadoop's way, below, which says what is wrong with the path
      }
    }
    return new Path(file.getPath()).makeQualified(uri, getWorkingDirectory());
  }

  /** The file's status, as Hadoop's, or null where Hadoop finds no file ({@code File.exists} is false). */
  private FileStatus status(File file, Path path) {
    BasicFileAttributes attributes;
    try {
      attributes = Files.readAttributes(file.toPath(), BasicFileAttributes.class);
    } catch (IOException e) {
      return null; // java.io's exists() is false for a stat that fails for any reason
    }
    return new NioFileStatus(attributes.size(), attributes.isDirectory(), blockSize,
        attributes.lastModifiedTime().toMillis(), attributes.lastAccessTime().toMillis(), path);
  }

  /**
   * A status whose owner, group and permission are read when first asked, like Hadoop's own local status
   * (loaded: the owner is not empty), of a link's target, as Hadoop's {@code ls -ld} of the canonical path.
   */
  static final class NioFileStatus extends FileStatus {
    private static final long serialVersionUID = 1L;

    NioFileStatus(long length, boolean isDir, long blockSize, long modified, long accessed, Path path) {
      super(length, isDir, 1, blockSize, modified, accessed, null, null, null, path);
    }

    private boolean loaded() {
      return !super.getOwner().isEmpty();
    }

    private synchronized void load() {
      if (loaded()) {
        return;
      }
      try {
        Map<String, Object> unix = Files.readAttributes(Paths.get(getPath().toUri().getPath()), "unix:mode,owner,group");
        // ls -ld's nine rwx characters and its sticky bit, as Hadoop's FsPermission.valueOf reads them
        setPermission(new FsPermission((short) ((Integer) unix.get("mode") & 01777)));
        setOwner(((UserPrincipal) unix.get("owner")).getName());
        setGroup(((GroupPrincipal) unix.get("group")).getName());
      } catch (IOException e) {
        throw new RuntimeException("Error while reading the permissions of " + getPath() + ": " + e, e);
      }
    }

    @Override
    public FsPermission getPermission() {
      load();
      return super.getPermission();
    }

    @Override
    public String getOwner() {
      load();
      return super.getOwner();
    }

    @Override
    public String getGroup() {
      load();
      return super.getGroup();
    }

    @Override
    @Deprecated
    public void write(java.io.DataOutput out) throws IOException {
      load();
      super.write(out);
    }
  }
}
